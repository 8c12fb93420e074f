import Foundation
import HVData
import HVTensor
import HVTrain

/// Prompt following on the synthetic latent world (`SyntheticLatents`): every clip of a fixed
/// prompt set is rendered (`LatentPreview`), written as mp4 like `hv-sample` writes it, read
/// back with the decoder and judged by `PromptChecker` — so the score covers the whole path a
/// person watching the file would see, including the H.264 round trip.
public enum PromptFollowing {
    public struct Prompt: Sendable, Equatable {
        public var text: String
        public var color: Int, shape: Int, direction: Int
    }

    /// The fixed set: every colour x direction (6 x 4 = 24), shapes alternating.
    public static let prompts: [Prompt] = SyntheticLatents.colors.indices.flatMap { c in
        SyntheticLatents.directions.indices.map { d in
            let s = (c + d) % SyntheticLatents.shapes.count
            return Prompt(text: "a \(SyntheticLatents.colors[c]) \(SyntheticLatents.shapes[s]) moving \(SyntheticLatents.directions[d])",
                          color: c, shape: s, direction: d)
        }
    }

    public struct Outcome: Sendable {
        public var prompt: Prompt
        public var path: String
        public var color: Int?, direction: Int?
        public var colorCorrect: Bool { color == prompt.color }
        public var directionCorrect: Bool { direction == prompt.direction }
    }

    public struct Report: Sendable {
        public var outcomes: [Outcome]
        public var colorHits: Int { outcomes.filter(\.colorCorrect).count }
        public var directionHits: Int { outcomes.filter(\.directionCorrect).count }
        public var colorAccuracy: Double { Double(colorHits) / Double(max(outcomes.count, 1)) }
        public var directionAccuracy: Double { Double(directionHits) / Double(max(outcomes.count, 1)) }
        public var summary: String {
            String(format: "prompt following over %d prompts: colour %d/%d (%.0f%%), direction %d/%d (%.0f%%)", outcomes.count,
                   colorHits, outcomes.count, 100 * colorAccuracy, directionHits, outcomes.count, 100 * directionAccuracy)
        }
    }

    /// Renders `latents(prompt, i)` ([1, C, T, H, W]) for every prompt to `outDir/NNN.mp4`,
    /// reads each file back and judges the decoded frames.
    public static func evaluate(prompts: [Prompt] = prompts, outDir: String, channels: Int,
                                latents: (Prompt, Int) throws -> Tensor) throws -> Report {
        try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        var outcomes: [Outcome] = []
        for (i, p) in prompts.enumerated() {
            let z = try latents(p, i)
            let frames = LatentPreview.frames(z, channels: channels)
            let w = z.shape[4] * 8, h = z.shape[3] * 8
            let path = outDir + String(format: "/%03d.mp4", i + 1)
            try writeVideo(frames, width: w, height: h, fps: 8, mp4: path, contactSheet: nil)
            outcomes.append(try judge(path: path, prompt: p))
        }
        return Report(outcomes: outcomes)
    }

    /// Reads an mp4 back and judges its colour and motion.
    public static func judge(path: String, prompt: Prompt) throws -> Outcome {
        let reader = try VideoReader(path: path)
        defer { reader.close() }
        let decoded = try reader.readAllFrames()
        guard let first = decoded.first else { return Outcome(prompt: prompt, path: path, color: nil, direction: nil) }
        let (c, d) = PromptChecker.judge(frames: decoded.map(\.rgb), width: first.width, height: first.height)
        return Outcome(prompt: prompt, path: path, color: c, direction: d)
    }

    /// A clean training latent of the synthetic world that matches `prompt` (the first
    /// dataset item with its colour, shape and direction): what a perfect model would sample.
    public static func referenceLatent(for prompt: Prompt, data: SyntheticLatents) -> Tensor {
        var i = 0
        while true {
            let item = data.item(i)
            if item.color == prompt.color && item.shape == prompt.shape && item.direction == prompt.direction {
                return item.latent.unsqueeze(0)
            }
            i += 1
        }
    }
}
