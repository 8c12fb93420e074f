import Foundation
import HVTensor

/// Flow matching as HunyuanVideo uses it: x_sigma = sigma * noise + (1 - sigma) * x0, the model
/// predicts v = noise - x0 at timestep sigma * 1000, loss = MSE of v.
public enum FlowMatching {
    /// sigma' = s * sigma / (1 + (s - 1) * sigma)
    @inline(__always) public static func shift(_ sigma: Double, _ s: Double) -> Double { s * sigma / (1 + (s - 1) * sigma) }

    /// Training sigmas: logit-normal (sigmoid of N(0,1)) or uniform, then shifted.
    public static func sampleSigmas(_ n: Int, logitNormal: Bool, shift s: Double, rng: inout HVRandom) -> [Float] {
        (0..<n).map { _ in
            let u = logitNormal ? 1 / (1 + Foundation.exp(-Double(rng.normal()))) : rng.uniformDouble()
            return Float(shift(u, s))
        }
    }

    /// (x_sigma, v_target) for clean latents x0 [B, ...], noise of the same shape and per-sample sigmas.
    public static func noisedInputs(x0: Tensor, noise: Tensor, sigmas: [Float]) -> (xt: Tensor, target: Tensor) {
        precondition(x0.shape == noise.shape && sigmas.count == x0.shape[0])
        var sShape = [Int](repeating: 1, count: x0.rank)
        sShape[0] = sigmas.count
        let s = Tensor(sigmas, shape: sShape)
        let xt = GradMode.withoutGrad { s * noise + (1 - s) * x0 }
        let target = GradMode.withoutGrad { noise - x0 }
        return (xt, target)
    }

    /// Sampling schedule: N+1 sigmas linearly from 1 to 0, shifted.
    public static func samplingSigmas(steps: Int, shift s: Double) -> [Double] {
        (0...steps).map { shift(1 - Double($0) / Double(steps), s) }
    }
}
