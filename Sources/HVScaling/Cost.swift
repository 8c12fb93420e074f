import Foundation
import HVModel
import HVTrain

/// Training cost of one sample of a run: FLOPs from `DiTConfig.trainingFLOPs` (linear layers
/// plus attention's S²-term, forward + backward), and the tokens it puts through the model.
/// With `data.image_ratio` r, a sample is an image (1 latent frame) with probability r, so both
/// are the expectation (1 - r)·video + r·image.
public struct SampleCost: Sendable, Equatable {
    public var flops: Double
    /// Video (latent patch) tokens + text tokens per sample: the D of L(N, D).
    public var tokens: Double
    public var videoTokens: Double
    public var textTokens: Int

    public init(flops: Double, tokens: Double, videoTokens: Double, textTokens: Int) {
        self.flops = flops; self.tokens = tokens; self.videoTokens = videoTokens; self.textTokens = textTokens
    }

    public init(run: RunConfig) {
        let m = run.model, d = run.data
        let L = run.text_encoder.max_tokens
        let video = m.videoTokens(latentT: d.frames, latentH: d.height, latentW: d.width)
        let image = m.videoTokens(latentT: 1, latentH: d.height, latentW: d.width)
        let r = d.image_ratio
        flops = (1 - r) * m.trainingFLOPs(videoTokens: video, textTokens: L) + r * m.trainingFLOPs(videoTokens: image, textTokens: L)
        videoTokens = (1 - r) * Double(video) + r * Double(image)
        textTokens = L
        tokens = videoTokens + Double(L)
    }

    /// The 6·N·D estimate for the same sample, for comparison.
    public static func sixND(params: Int, tokens: Double) -> Double { 6 * Double(params) * tokens }

    /// Attention's share: 12·L·S²·H FLOPs per sample (forward + backward, L = all dual- and
    /// single-stream blocks, S = video + text tokens), the term 6·N·D leaves out.
    public static func attentionFLOPs(_ m: DiTConfig, videoTokens: Int, textTokens: Int) -> Double {
        let S = Double(videoTokens + textTokens)
        return 12 * Double(m.mm_double_blocks_depth + m.mm_single_blocks_depth) * S * S * Double(m.hidden_size)
    }
}
