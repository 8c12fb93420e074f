import ArgumentParser
import Foundation
import HVModel
import HVTensor

/// The PyTorch side of `hv-bench step` and `hv-bench sample`: diffusers'
/// HunyuanVideoTransformer3DModel of the same config, run by scripts/dev/torch_step_bench.py in
/// the given venv with the same threads, one step per request (`session`), so that its steps
/// alternate with hv's (`alternate`).
struct TorchBench {
    let venv: String
    let model: DiTConfig
    let latent: String
    let textTokens: Int
    let batch: Int
    let threads: Int

    /// A running PyTorch side, warmed up; `mode` is "train" or "sample"; bf16 runs the forward
    /// under torch.autocast(bfloat16).
    func session(mode: String, bf16: Bool) throws -> TorchSession {
        let rope = model.rope_dim_list.map(String.init).joined(separator: ",")
        var args = ["scripts/dev/torch_step_bench.py", "--mode", mode, "--hidden", "\(model.hidden_size)", "--heads", "\(model.heads_num)",
                    "--double", "\(model.mm_double_blocks_depth)", "--single", "\(model.mm_single_blocks_depth)",
                    "--refiner", "\(model.refiner_depth)", "--rope", rope, "--text-dim", "\(model.text_states_dim)",
                    "--pooled-dim", "\(model.text_states_dim_2)", "--latent", latent, "--text-tokens", "\(textTokens)",
                    "--batch", "\(batch)", "--threads", "\(threads)", "--serve"]
        if bf16 { args.append("--bf16") }
        return try TorchSession(venv: venv, args: args, threads: threads)
    }
}

/// scripts/dev/torch_step_bench.py --serve as a child process: one timed PyTorch step per
/// `step()` (the time is measured in Python, around the step alone).
final class TorchSession {
    private let proc = Process()
    private let toChild = Pipe(), fromChild = Pipe()
    private var pending = Data()
    private let command: String
    /// "torch X, diffusers Y, N params", from the child's first line.
    let versions: String

    init(venv: String, args: [String], threads: Int) throws {
        let py = (venv as NSString).appendingPathComponent("bin/python")
        guard FileManager.default.isExecutableFile(atPath: py) else {
            throw ValidationError("--torch \(venv): \(py) does not exist; give a venv with torch and diffusers "
                                  + "(python3 -m venv V && V/bin/pip install torch diffusers)")
        }
        command = "\(py) \(args.joined(separator: " "))"
        proc.executableURL = URL(fileURLWithPath: py)
        proc.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["OMP_NUM_THREADS"] = "\(threads)"
        proc.environment = env
        proc.standardInput = toChild
        proc.standardOutput = fromChild
        // A child that dies makes the next write to it raise SIGPIPE, which would end hv-bench
        // before it could say why; ignored, the write fails and the error below is reported.
        signal(SIGPIPE, SIG_IGN)
        try proc.run()
        let info = try TorchSession.readJSON(proc: proc, from: fromChild, pending: &pending, command: command)
        versions = "torch \(info["torch"] ?? "?"), diffusers \(info["diffusers"] ?? "?"), \(info["params"] ?? "?") params"
    }

    /// Runs one PyTorch step and returns its time in seconds.
    func step() throws -> Double {
        guard proc.isRunning else {
            throw ValidationError("the PyTorch side exited (status \(proc.terminationStatus)); run \(command) to see why")
        }
        try toChild.fileHandleForWriting.write(contentsOf: Data("step\n".utf8))
        guard let s = try TorchSession.readJSON(proc: proc, from: fromChild, pending: &pending, command: command)["seconds"] as? Double else {
            throw ValidationError("the PyTorch side answered a step without its time; run \(command) to see why")
        }
        return s
    }

    func close() {
        if proc.isRunning { try? toChild.fileHandleForWriting.write(contentsOf: Data("quit\n".utf8)) }
        try? toChild.fileHandleForWriting.close()
        proc.waitUntilExit()
    }

    /// Seconds the child may take for one answer (its warm-up included) before it is taken to
    /// hang, stopped, and reported.
    static let answerTimeout: Int32 = 900

    /// The next line of the child's output as a JSON object (lines that are not JSON objects,
    /// such as library warnings, are skipped).
    private static func readJSON(proc: Process, from fromChild: Pipe, pending: inout Data, command: String) throws -> [String: Any] {
        while true {
            if let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<nl]
                pending = Data(pending[pending.index(after: nl)...])
                if let obj = try? JSONSerialization.jsonObject(with: line) as? [String: Any] { return obj }
                continue
            }
            var ready = pollfd(fd: fromChild.fileHandleForReading.fileDescriptor, events: Int16(POLLIN), revents: 0)
            if poll(&ready, 1, answerTimeout * 1000) == 0 {
                proc.terminate()
                throw ValidationError("the PyTorch side gave no answer in \(answerTimeout) s and was stopped; run \(command) to see why")
            }
            let more = fromChild.fileHandleForReading.availableData
            if more.isEmpty {
                proc.waitUntilExit()
                throw ValidationError("the PyTorch side exited (status \(proc.terminationStatus)) before answering; run \(command) to see why")
            }
            pending.append(more)
        }
    }
}

/// hv's and PyTorch's steps, alternating: two warm-up steps of hv (PyTorch's session has had
/// its own two; hv's second training step still ran up to 40% slow), then `repeats` pairs of one
/// hv step and one PyTorch step, with a 0.1 s pause before each so that the other side's
/// threads are idle. Both sides thus see the same host conditions, which on a shared machine
/// drift by 10-20% within minutes.
func alternate(repeats: Int, hv: () -> Void, torch: TorchSession) throws -> (hv: [Double], torch: [Double]) {
    hv()
    hv()
    var h: [Double] = [], t: [Double] = []
    for _ in 0..<max(repeats, 1) {
        Thread.sleep(forTimeInterval: 0.1)
        let t0 = DispatchTime.now().uptimeNanoseconds
        hv()
        h.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        Thread.sleep(forTimeInterval: 0.1)
        t.append(try torch.step())
    }
    if ProcessInfo.processInfo.environment["HV_BENCH_TIMES"] == "1" {
        FileHandle.standardError.write(Data(("pairs (hv, PyTorch): " + zip(h, t).map { String(format: "%.4f/%.4f", $0, $1) }.joined(separator: " ") + "\n").utf8))
    }
    return (h, t)
}

/// Bests per precision of hv's and PyTorch's steps, and the median of the pairs' ratios.
struct SideBySide {
    var hv: [MatmulPrecision: Double] = [:], torch: [MatmulPrecision: Double] = [:], pairs: [MatmulPrecision: Double] = [:]
    let precisions: [MatmulPrecision]

    /// Times `step` under each precision: alone when there is no PyTorch side, else alternating
    /// with PyTorch's same step (`mode` "train" or "sample"); `printHV(p, best, median)` and
    /// `printTorch(p, best, median, versions)` print each side's line.
    init(_ precisions: [MatmulPrecision], repeats: Int, side: TorchBench?, mode: String, step: () -> Void,
         printHV: (MatmulPrecision, Double, Double) -> Void, printTorch: (MatmulPrecision, Double, Double, String) -> Void) throws {
        self.precisions = precisions
        if side != nil { print("hv and PyTorch steps alternate: \(max(repeats, 1)) pairs after two warm-up steps of each") }
        defer { try? MatmulPrecision.select(.fp32) }
        for p in precisions {
            try MatmulPrecision.select(p)
            guard let side else {
                let t = timings(repeats: repeats, step)
                hv[p] = t.best
                printHV(p, t.best, t.median)
                continue
            }
            let session = try side.session(mode: mode, bf16: p == .bf16)
            defer { session.close() }
            let r = try alternate(repeats: repeats, hv: step, torch: session)
            let (h, t) = (bestAndMedian(r.hv), bestAndMedian(r.torch))
            (hv[p], torch[p]) = (h.best, t.best)
            pairs[p] = bestAndMedian(zip(r.hv, r.torch).map { $0 / $1 }).median
            printHV(p, h.best, h.median)
            printTorch(p, t.best, t.median, session.versions)
        }
    }

    /// The ratio lines ("hv / pytorch <what> = ..."), when PyTorch was timed.
    func printRatios(_ what: String, repeats: Int) {
        for p in precisions {
            guard let h = hv[p], let t = torch[p], let m = pairs[p] else { continue }
            print(String(format: "ratio    hv %@ / pytorch %@ %@ = %.2f  (target <= 0.80; median of the %d pairs' ratios %.2f)",
                         p.rawValue, p.rawValue, what, h / t, max(repeats, 1), m))
        }
        if let h = hv[.bf16], let f = torch[.fp32] {
            print(String(format: "ratio    hv bf16 / pytorch fp32 %@ = %.2f", what, h / f))
        }
    }
}

/// The smallest and the median value (the mean of the middle two for an even count).
func bestAndMedian(_ xs: [Double]) -> (best: Double, median: Double) {
    let s = xs.sorted(), n = s.count
    return (s[0], n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2)
}

/// Runs a dev script with the venv's python (OMP_NUM_THREADS = threads) and returns the JSON
/// object on the last line of its output; `side` names it in errors.
func runPythonJSON(venv: String, args: [String], threads: Int, env: [String: String] = ProcessInfo.processInfo.environment,
                   side: String) throws -> [String: Any] {
    let py = (venv as NSString).appendingPathComponent("bin/python")
    let proc = Process()
    proc.executableURL = URL(fileURLWithPath: py)
    proc.arguments = args
    var env = env
    env["OMP_NUM_THREADS"] = "\(threads)"
    proc.environment = env
    let pipe = Pipe()
    proc.standardOutput = pipe
    try proc.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    proc.waitUntilExit()
    guard proc.terminationStatus == 0,
          let line = String(data: data, encoding: .utf8)?.split(separator: "\n").last,
          let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
        throw ValidationError("the \(side) side failed (exit \(proc.terminationStatus)); run \(py) \(args.joined(separator: " ")) to see why")
    }
    return obj
}

/// `--precision fp32|bf16|both` of the step and sample benchmarks.
enum BenchPrecision: String, ExpressibleByArgument, CaseIterable {
    case fp32, bf16, both
    var list: [MatmulPrecision] {
        switch self {
        case .fp32: [.fp32]
        case .bf16: [.bf16]
        case .both: [.fp32, .bf16]
        }
    }
}
