import HVTensor

/// nn.Linear: weight [out, in], bias [out].
public final class Linear: Module {
    public let weight: Tensor
    public let bias: Tensor?

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, rng: inout HVRandom) {
        weight = Init.uniformFanIn([outFeatures, inFeatures], fanIn: inFeatures, rng: &rng)
        self.bias = bias ? Init.uniformFanIn([outFeatures], fanIn: inFeatures, rng: &rng) : nil
    }

    /// A linear whose weight and bias start at zero (adaLN modulation, final projection).
    public init(zeroed inFeatures: Int, _ outFeatures: Int, bias: Bool = true) {
        weight = Tensor(zeros: [outFeatures, inFeatures])
        self.bias = bias ? Tensor(zeros: [outFeatures]) : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.linear(weight, bias) }

    /// GELU (tanh) of this layer's output columns >= `column`, fused into the product; outside a
    /// graph only (`Tensor.linearGELU`).
    public func callAsFunction(_ x: Tensor, geluFromColumn column: Int) -> Tensor { x.linearGELU(weight, bias, fromColumn: column) }

    /// This layer applied to the concatenation of `parts` along the last axis, without forming it.
    public func callAsFunction(concatenating parts: [Tensor]) -> Tensor { Tensor.linear(concatenating: parts, weight, bias) }
}

/// nn.LayerNorm over the last axis, optionally affine.
public final class LayerNorm: Module {
    public let weight: Tensor?
    public let bias: Tensor?
    public let eps: Float

    public init(_ dim: Int, affine: Bool = true, eps: Float = 1e-6) {
        weight = affine ? Init.ones([dim]) : nil
        bias = affine ? Init.zeros([dim]) : nil
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.layerNorm(weight: weight, bias: bias, eps: eps) }
}

/// RMSNorm with a learnable scale (HunyuanVideo's QK-norm).
public final class RMSNorm: Module {
    public let weight: Tensor
    public let eps: Float

    public init(_ dim: Int, eps: Float = 1e-6) {
        weight = Init.ones([dim])
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.rmsNorm(weight: weight, eps: eps) }
}

/// nn.GroupNorm over [N, C, ...].
public final class GroupNorm: Module {
    public let weight: Tensor
    public let bias: Tensor
    public let groups: Int
    public let eps: Float

    public init(groups: Int, channels: Int, eps: Float = 1e-6) {
        weight = Init.ones([channels])
        bias = Init.zeros([channels])
        self.groups = groups
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps) }
    /// `self(x).silu()`, fused (in place) when nothing is recorded.
    public func thenSiLU(_ x: Tensor) -> Tensor { x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps, silu: true) }
}

/// nn.Conv3d: weight [out, in, kt, kh, kw], bias [out].
public final class Conv3d: Module {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: (t: Int, h: Int, w: Int)
    public let padding: Conv3dPadding

    public init(_ inChannels: Int, _ outChannels: Int, kernel: (t: Int, h: Int, w: Int), stride: (t: Int, h: Int, w: Int) = (1, 1, 1),
                padding: Conv3dPadding = .none, bias: Bool = true, rng: inout HVRandom) {
        let fanIn = inChannels * kernel.t * kernel.h * kernel.w
        weight = Init.uniformFanIn([outChannels, inChannels, kernel.t, kernel.h, kernel.w], fanIn: fanIn, rng: &rng)
        self.bias = bias ? Init.uniformFanIn([outChannels], fanIn: fanIn, rng: &rng) : nil
        self.stride = stride
        self.padding = padding
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { x.conv3d(weight, bias: bias, stride: stride, padding: padding) }
}

/// nn.Embedding: weight [count, dim].
public final class Embedding: Module {
    public let weight: Tensor

    public init(_ count: Int, _ dim: Int, rng: inout HVRandom) {
        weight = Tensor.randn([count, dim], rng: &rng)
    }

    public func callAsFunction(_ indices: [Int], shape: [Int]? = nil) -> Tensor {
        Tensor.embedding(weight, indices: indices, indicesShape: shape)
    }
}
