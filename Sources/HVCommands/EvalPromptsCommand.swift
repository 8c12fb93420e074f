import ArgumentParser
import Foundation
import HVSampling
import HVTensor
import HVTrain

/// `hv-sample eval`: prompt-following accuracy of a model trained on the synthetic latent world.
struct EvalPromptsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Prompt-following accuracy (colour and motion direction) of a model trained on synthetic latents.",
        discussion: """
        Samples the fixed set of 24 prompts (6 colours x 4 directions, "a red square moving left", shapes alternating),
        one seed each (--seed + prompt index), writes OUT-DIR/001.mp4 ..., reads every mp4 back and judges its dominant
        colour and the motion of its centroid (PromptChecker). --reference renders clean training latents of the
        synthetic world instead of samples (what a perfect model would produce: it must score 100%).
        Examples:
          hv-sample eval --checkpoint checkpoints/demo --out-dir /tmp/eval
          hv-sample eval --reference --config configs/runs/quickstart.yaml --out-dir /tmp/eval-ref
        """)

    @Option(help: "Consolidated .h5, checkpoint directory or run directory.") var checkpoint: String?
    @Flag(help: "Judge clean training latents instead of samples (checks the renderer, mp4 round trip and checker).") var reference = false
    @Option(help: "Run config for --reference (default: the checkpoint's).") var config: String?
    @Option(help: "Directory for the mp4 files.") var outDir: String
    @Option(help: "First seed (prompt i uses seed + i).") var seed: UInt64 = 0
    @Option(help: "Sampling steps (default: the run config's sample.steps).") var steps: Int?
    @Option(help: "Classifier-free guidance scale (default: the run config's sample.guidance).") var guidance: Double?
    @Option(help: "Time-step shift (default: the run config's sample.shift).") var shift: Double?
    @Option(help: "Negative prompt for classifier-free guidance.") var negativePrompt = ""
    @Flag(help: "Print the report as one JSON object on stdout.") var json = false
    @OptionGroup var threads: ThreadOptions
    @OptionGroup var precision: PrecisionOptions

    func run() throws {
        try runOrExit {
            threads.apply()
            try precision.apply()
            let report: PromptFollowing.Report
            if reference {
                let run: RunConfig
                if let config { run = try RunConfig.load(path: config) }
                else if let checkpoint { run = try TextToVideo.load(checkpoint).run }
                else { throw ValidationError("--reference needs --config RUN.yaml or --checkpoint") }
                let d = run.data
                let data = SyntheticLatents(count: d.count, channels: run.model.in_channels, frames: d.frames, height: d.height,
                                            width: d.width, seed: d.seed, objectSize: d.object_size, randomStart: d.random_start, speed: d.speed)
                report = try PromptFollowing.evaluate(outDir: outDir, channels: run.model.in_channels) { p, _ in
                    PromptFollowing.referenceLatent(for: p, data: data)
                }
            } else {
                guard let checkpoint else { throw ValidationError("give --checkpoint (or --reference)") }
                let model = try TextToVideo.load(checkpoint)
                var o = model.run.samplingDefaults
                if let steps { o.steps = steps }
                if let guidance { o.guidance = guidance }
                if let shift { o.shift = shift }
                o.latentFrames = model.run.data.frames; o.latentHeight = model.run.data.height; o.latentWidth = model.run.data.width
                let base = o
                report = try PromptFollowing.evaluate(outDir: outDir, channels: model.run.model.in_channels) { p, i in
                    var oi = base
                    oi.seed = seed &+ UInt64(i)
                    return try model.sampleLatents(prompt: p.text, negativePrompt: negativePrompt, options: oi)
                }
            }
            for o in report.outcomes {
                func name(_ i: Int?, _ names: [String]) -> String { i.map { names[$0] } ?? "none" }
                stderrLine("\(o.colorCorrect && o.directionCorrect ? "ok  " : "MISS") \"\(o.prompt.text)\" -> \(name(o.color, SyntheticLatents.colors)), "
                           + "\(name(o.direction, SyntheticLatents.directions))  \(o.path)")
            }
            stderrLine(report.summary)
            if json {
                let obj: [String: Any] = ["prompts": report.outcomes.count, "color_hits": report.colorHits, "direction_hits": report.directionHits,
                                          "color_accuracy": report.colorAccuracy, "direction_accuracy": report.directionAccuracy]
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
