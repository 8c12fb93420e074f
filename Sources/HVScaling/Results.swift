import Foundation

/// One finished run of a sweep: a row of results.csv.
public struct ScalingResult: Codable, Sendable, Equatable {
    public var run: String
    public var member: String
    /// The IsoFLOP budget the run belongs to (its actual `flops` differ by < 1 step).
    public var budget: Double
    public var params: Double
    public var tokens: Double
    public var flops: Double
    /// The loss the fits use: `eval_loss` when measured, else `train_loss`.
    public var loss: Double
    /// Mean training loss of the last steps (metrics.jsonl).
    public var train_loss: Double?
    /// Held-out flow-matching loss at fixed sigmas and noise (see HeldOutEval).
    public var eval_loss: Double?
    public var steps: Int?
    public var batch: Int?
    public var flops_per_sample: Double?
    public var seconds: Double?

    public init(run: String, member: String, budget: Double, params: Double, tokens: Double, flops: Double, loss: Double,
                train_loss: Double? = nil, eval_loss: Double? = nil, steps: Int? = nil, batch: Int? = nil,
                flops_per_sample: Double? = nil, seconds: Double? = nil) {
        self.run = run; self.member = member; self.budget = budget; self.params = params; self.tokens = tokens; self.flops = flops
        self.loss = loss; self.train_loss = train_loss; self.eval_loss = eval_loss; self.steps = steps; self.batch = batch
        self.flops_per_sample = flops_per_sample; self.seconds = seconds
    }
}

public enum ResultsCSV {
    static let columns = ["run", "member", "budget", "params", "tokens", "flops", "loss", "train_loss", "eval_loss", "steps", "batch",
                          "flops_per_sample", "seconds"]

    public static func format(_ rows: [ScalingResult]) -> String {
        func f(_ x: Double?) -> String { x.map { String(format: "%.9g", $0) } ?? "" }
        var out = columns.joined(separator: ",") + "\n"
        for r in rows.sorted(by: { ($0.budget, $0.params) < ($1.budget, $1.params) }) {
            out += [r.run, r.member, f(r.budget), f(r.params), f(r.tokens), f(r.flops), f(r.loss), f(r.train_loss), f(r.eval_loss),
                    r.steps.map(String.init) ?? "", r.batch.map(String.init) ?? "", f(r.flops_per_sample), f(r.seconds)]
                .joined(separator: ",") + "\n"
        }
        return out
    }

    public static func write(_ rows: [ScalingResult], to path: String) throws {
        try format(rows).write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// Reads a CSV with at least the columns params, tokens, flops, loss (any order, any extra
    /// columns). Without a `budget` column, runs are grouped into IsoFLOP budgets by compute:
    /// sorted by FLOPs, a new group starts where consecutive runs differ by more than 25%.
    public static func read(path: String) throws -> [ScalingResult] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ScalingError.unreadable(file: path, reason: error.localizedDescription)
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String = "<csv>") throws -> [ScalingResult] {
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard let header = lines.first else { throw ScalingError.results(file: file, message: "empty file") }
        let cols = header.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        for need in ["params", "tokens", "flops", "loss"] where !cols.contains(need) {
            throw ScalingError.results(file: file, message: "no '\(need)' column (need params,tokens,flops,loss; found \(cols.joined(separator: ",")))")
        }
        var rows: [ScalingResult] = []
        var hasBudget = cols.contains("budget")
        for (i, line) in lines.dropFirst().enumerated() {
            let cells = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            var v: [String: String] = [:]
            for (c, x) in zip(cols, cells) { v[c] = x }
            func num(_ k: String) throws -> Double {
                guard let s = v[k], let x = Double(s), x.isFinite else {
                    throw ScalingError.results(file: file, message: "line \(i + 2): '\(k)' is not a number ('\(v[k] ?? "")')")
                }
                return x
            }
            func opt(_ k: String) -> Double? { v[k].flatMap(Double.init).flatMap { $0.isFinite ? $0 : nil } }
            /// A whole count (steps, batch): a finite number in Int's range, else absent.
            func count(_ k: String) -> Int? { opt(k).flatMap { abs($0) < 1e15 ? Int($0) : nil } }
            let params = try num("params"), tokens = try num("tokens"), flops = try num("flops"), loss = try num("loss")
            guard params > 0, tokens > 0, flops > 0, loss > 0 else {
                throw ScalingError.results(file: file, message: "line \(i + 2): params, tokens, flops and loss must be positive")
            }
            let budget = opt("budget")
            if budget == nil { hasBudget = false }
            rows.append(ScalingResult(run: v["run"].flatMap { $0.isEmpty ? nil : $0 } ?? "run\(i)", member: v["member"] ?? "",
                                      budget: budget ?? flops, params: params, tokens: tokens, flops: flops, loss: loss,
                                      train_loss: opt("train_loss"), eval_loss: opt("eval_loss"), steps: count("steps"),
                                      batch: count("batch"), flops_per_sample: opt("flops_per_sample"), seconds: opt("seconds")))
        }
        if !hasBudget { assignBudgets(&rows) }
        return rows
    }

    /// Groups runs by compute (gap > 25% starts a new group); each group's budget is its geometric-mean FLOPs.
    static func assignBudgets(_ rows: inout [ScalingResult]) {
        let order = rows.indices.sorted { rows[$0].flops < rows[$1].flops }
        var groups: [[Int]] = []
        for i in order {
            if let last = groups.last?.last, rows[i].flops <= rows[last].flops * 1.25 { groups[groups.count - 1].append(i) } else { groups.append([i]) }
        }
        for g in groups {
            let c = exp(g.map { log(rows[$0].flops) }.reduce(0, +) / Double(g.count))
            for i in g { rows[i].budget = c }
        }
    }
}

/// Per-step training losses of a run directory (metrics.jsonl). A resumed run appends the
/// steps it redoes after its checkpoint, so the last entry of a step wins.
public func readLossCurve(runDir: String) -> [(step: Int, loss: Double)] {
    guard let text = try? String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8) else { return [] }
    var byStep: [Int: Double] = [:]
    for line in text.split(separator: "\n") {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let step = obj["step"] as? Int, let loss = obj["loss"] as? Double, loss.isFinite else { continue }
        byStep[step] = loss
    }
    return byStep.keys.sorted().map { ($0, byStep[$0]!) }
}

/// Mean loss of the last `k` steps (default: the last 10% of the run, at least 1 and at most 50 steps).
public func finalTrainLoss(_ curve: [(step: Int, loss: Double)], last k: Int? = nil) -> Double? {
    guard !curve.isEmpty else { return nil }
    let n = k ?? min(50, max(1, curve.count / 10))
    let tail = curve.suffix(n)
    return tail.map(\.loss).reduce(0, +) / Double(tail.count)
}
