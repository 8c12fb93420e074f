import HVNN
import HVTensor

/// `txt_in.individual_token_refiner.blocks.N`: bidirectional self-attention over the text
/// tokens (masked) and a SiLU MLP, each gated by adaLN from the refiner's conditioning.
public final class IndividualTokenRefinerBlock: Module {
    public let norm1: LayerNorm
    public let self_attn_qkv: Linear
    public let self_attn_proj: Linear
    public let norm2: LayerNorm
    public let mlp: MLP
    public let adaLN_modulation: Sequential
    let heads: Int

    public init(hidden: Int, heads: Int, mlpRatio: Double, rng: inout HVRandom) {
        self.heads = heads
        norm1 = LayerNorm(hidden, affine: true, eps: 1e-6)
        self_attn_qkv = Linear(hidden, 3 * hidden, rng: &rng)
        self_attn_proj = Linear(hidden, hidden, rng: &rng)
        norm2 = LayerNorm(hidden, affine: true, eps: 1e-6)
        mlp = MLP(hidden: hidden, inner: Int(Double(hidden) * mlpRatio), activation: .silu, rng: &rng)
        adaLN_modulation = Sequential([(1, Linear(zeroed: hidden, 2 * hidden))])
    }

    /// x [B, L, H], c [B, H], mask [B, L] (1 = real token)
    public func callAsFunction(_ x: Tensor, c: Tensor, mask: Tensor?) -> Tensor {
        let gates = (adaLN_modulation[1] as! Linear)(c.silu()).chunk(2, axis: -1)
        let (q, k, v) = splitQKV(self_attn_qkv(norm1(x)), heads: heads)
        // Padded text tokens are masked as keys; their own (query) rows never reach the image stream.
        var h = x.addingGated(self_attn_proj(attention(q, k, v, keyMask: mask)), gate: gates[0])
        h = h.addingGated(mlp(norm2(h)), gate: gates[1])
        return h
    }
}

public final class IndividualTokenRefiner: Module {
    public let blocks: [IndividualTokenRefinerBlock]
    public init(hidden: Int, heads: Int, depth: Int, mlpRatio: Double, rng: inout HVRandom) {
        var bs: [IndividualTokenRefinerBlock] = []
        for _ in 0..<depth { bs.append(IndividualTokenRefinerBlock(hidden: hidden, heads: heads, mlpRatio: mlpRatio, rng: &rng)) }
        blocks = bs
    }
}

/// `txt_in`: projects LLM text states to the hidden size and refines them, conditioned on the
/// timestep and the masked mean of the text states.
public final class SingleTokenRefiner: Module {
    public let input_embedder: Linear
    public let t_embedder: TimestepEmbedder
    public let c_embedder: TextProjection
    public let individual_token_refiner: IndividualTokenRefiner

    public init(inDim: Int, hidden: Int, heads: Int, depth: Int, rng: inout HVRandom) {
        input_embedder = Linear(inDim, hidden, rng: &rng)
        t_embedder = TimestepEmbedder(hidden: hidden, rng: &rng)
        c_embedder = TextProjection(inDim: inDim, hidden: hidden, rng: &rng)
        individual_token_refiner = IndividualTokenRefiner(hidden: hidden, heads: heads, depth: depth, mlpRatio: 4.0, rng: &rng)
    }

    /// text [B, L, Dt], t [B], mask [B, L] -> [B, L, H]
    public func callAsFunction(_ text: Tensor, t: [Float], mask: Tensor?) -> Tensor {
        let pooled: Tensor
        if let mask {
            let m = mask.unsqueeze(-1)  // [B, L, 1]
            pooled = (text * m).sum(axis: 1) / m.sum(axis: 1)
        } else {
            pooled = text.mean(axis: 1)
        }
        let c = t_embedder(t) + c_embedder(pooled)
        var x = input_embedder(text)
        for block in individual_token_refiner.blocks { x = block(x, c: c, mask: mask) }
        return x
    }
}
