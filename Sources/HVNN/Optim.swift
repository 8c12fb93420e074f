import CHVKernels
import Foundation
import HVTensor

/// AdamW with decoupled weight decay (Loshchilov & Hutter), fp32 state:
/// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m^ / (sqrt(v^) + eps) + wd p).
/// State is keyed by parameter name so it can be saved, sharded and resharded by name.
public final class AdamW {
    public var lr: Float
    public var beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public private(set) var step = 0
    public var exp_avg: [String: Tensor] = [:]
    public var exp_avg_sq: [String: Tensor] = [:]

    public init(lr: Float = 1e-4, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0) {
        self.lr = lr; self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }

    /// One update of `params` (name, tensor) using their `.grad`; parameters without a grad are skipped.
    public func update(_ params: [(String, Tensor)]) {
        step += 1
        let bc1 = 1 - Foundation.pow(beta1, Float(step)), bc2 = 1 - Foundation.pow(beta2, Float(step))
        for (name, p) in params {
            guard let g = p.grad?.contiguous() else { continue }
            let m = exp_avg[name] ?? Tensor(zeros: p.shape)
            let v = exp_avg_sq[name] ?? Tensor(zeros: p.shape)
            exp_avg[name] = m; exp_avg_sq[name] = v
            AdamW.kernel(p: p.pointer, g: g.pointer, m: m.pointer, v: v.pointer, n: p.count, lr: lr, beta1: beta1, beta2: beta2,
                         eps: eps, weightDecay: weightDecay, bc1: bc1, bc2: bc2)
        }
    }

    /// The elementwise AdamW update on raw buffers (also used on ZeRO shards).
    public static func kernel(p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
                              v: UnsafeMutablePointer<Float>, n: Int, lr: Float, beta1: Float, beta2: Float, eps: Float,
                              weightDecay: Float, bc1: Float, bc2: Float) {
        // Two threads over halves (64-byte aligned split) once the buffer is large enough to pay.
        let parts = n >= 1 << 20 ? 2 : 1
        struct Buffers: @unchecked Sendable {
            let p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>
        }
        let b = Buffers(p: p, g: g, m: m, v: v)
        Parallel.run(threads: parts) { k, count in
            let per = ((n + count - 1) / count + 15) & ~15
            let lo = min(n, k * per), hi = min(n, lo + per)
            if lo < hi {
                hv_adamw(b.p + lo, b.g + lo, b.m + lo, b.v + lo, hi - lo, lr, beta1, beta2, eps, weightDecay, bc1, bc2)
            }
        }
    }

    /// Restores the step counter (resume).
    public func setStep(_ s: Int) { step = s }
}

/// Scales every gradient so that their global L2 norm is at most `maxNorm`; returns the norm before clipping.
@discardableResult
public func clipGradNorm(_ params: [Tensor], maxNorm: Float) -> Float {
    var total: Double = 0
    for p in params { if let g = p.grad { let s = g.scalars; for x in s { total += Double(x) * Double(x) } } }
    let norm = Float(total.squareRoot())
    if maxNorm > 0 && norm > maxNorm {
        let scale = maxNorm / (norm + 1e-6)
        for p in params { if let g = p.grad { let ptr = g.pointer; for i in 0..<g.count { ptr[i] *= scale } } }
    }
    return norm
}

/// Learning-rate schedules: linear warm-up, then constant or cosine decay to `minRatio * base`.
public struct LRSchedule: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case constant, cosine }
    public var kind: Kind
    public var base: Float
    public var warmupSteps: Int
    public var totalSteps: Int
    public var minRatio: Float

    public init(kind: Kind = .constant, base: Float = 1e-4, warmupSteps: Int = 0, totalSteps: Int = 1, minRatio: Float = 0.1) {
        self.kind = kind; self.base = base; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps; self.minRatio = minRatio
    }

    /// LR for 0-based `step`.
    public func lr(at step: Int) -> Float {
        if warmupSteps > 0 && step < warmupSteps { return base * Float(step + 1) / Float(warmupSteps) }
        switch kind {
        case .constant: return base
        case .cosine:
            let span = max(1, totalSteps - warmupSteps)
            let progress = min(1, Float(step - warmupSteps) / Float(span))
            let cosine = 0.5 * (1 + Foundation.cos(Float.pi * progress))
            return base * (minRatio + (1 - minRatio) * cosine)
        }
    }
}
