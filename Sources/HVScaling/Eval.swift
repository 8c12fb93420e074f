import Foundation
import HVModel
import HVTensor
import HVTrain

/// The held-out loss a sweep records for each run: the flow-matching velocity MSE on `samples`
/// clips the run never trained on (the same synthetic world, another data seed), each at a
/// fixed sigma — the K quantiles (i + 0.5)/K of the run's sigma distribution (logit-normal and
/// shift as in training) — with fixed noise. Every run of a sweep sees exactly the same inputs,
/// so its losses compare without the step-to-step noise of training losses.
public enum HeldOutEval {
    /// Data seed offset of the held-out clips.
    public static let seedOffset: UInt64 = 0x9E37_79B9_7F4A_7C15

    public static func loss(run: RunConfig, checkpoint: String, samples K: Int = 64, batch: Int = 16) throws -> Double {
        let trainer = try Trainer(config: run)
        try Checkpointing.load(trainer, from: checkpoint)
        return loss(model: trainer.model, textEncoder: trainer.textEncoder, run: run, samples: K, batch: batch)
    }

    public static func loss(model: HunyuanDiT, textEncoder: HashTextEncoder, run: RunConfig, samples K: Int = 64, batch: Int = 16) -> Double {
        let d = run.data, m = run.model
        let data = SyntheticLatents(count: K, channels: m.in_channels, frames: d.frames, height: d.height, width: d.width,
                                    seed: d.seed &+ seedOffset, objectSize: d.object_size, randomStart: d.random_start, speed: d.speed)
        let sigmas = (0..<K).map { i -> Float in
            let p = (Double(i) + 0.5) / Double(K)
            let s = run.flow.logit_normal ? 1 / (1 + Foundation.exp(-inverseNormalCDF(p))) : p
            return Float(FlowMatching.shift(s, run.flow.time_shift))
        }
        let g = Float((run.flow.guidance_min + run.flow.guidance_max) / 2 * 1000)
        return GradMode.withoutGrad {
            var total = 0.0
            for start in stride(from: 0, to: K, by: batch) {
                let idx = Array(start..<min(K, start + batch))
                let (x0, captions) = data.batch(idx)
                let perSample = Array(x0.shape.dropFirst())
                let noise = Tensor.concat(idx.map { i -> Tensor in
                    var rng = HVRandom(seed: 0xE7A1).split("eval-noise").split(UInt64(i))
                    return Tensor.randn([1] + perSample, rng: &rng)
                }, axis: 0)
                let s = idx.map { sigmas[$0] }
                let (xt, target) = FlowMatching.noisedInputs(x0: x0, noise: noise, sigmas: s)
                let text = textEncoder.encode(captions)
                let v = model(DiTInputs(x: xt, t: s.map { $0 * 1000 }, text_states: text.states, text_mask: text.mask,
                                        text_states_2: text.pooled, guidance: m.guidance_embed ? [Float](repeating: g, count: idx.count) : nil))
                total += Double(v.mseLoss(target).item) * Double(idx.count)
            }
            return total / Double(K)
        }
    }
}

/// Φ⁻¹(p) for the standard normal (Acklam's rational approximation, relative error < 1.2e-9).
public func inverseNormalCDF(_ p: Double) -> Double {
    precondition(p > 0 && p < 1)
    let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00]
    let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01]
    let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00]
    let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    let lo = 0.02425, hi = 1 - lo
    if p < lo {
        let q = (-2 * Foundation.log(p)).squareRoot()
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    }
    if p > hi {
        let q = (-2 * Foundation.log(1 - p)).squareRoot()
        return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    }
    let q = p - 0.5, r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
}
