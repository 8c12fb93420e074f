import HVNN
import HVTensor

/// What the DiT needs from text: per-token states [B, L, D], a mask [B, L] (1 = real token) and
/// a pooled vector [B, D2]. HunyuanVideo uses a frozen multimodal LLM (D = 4096) and CLIP-L
/// (D2 = 768); a frozen pretrained encoder can implement this protocol later.
public protocol TextEncoder: AnyObject {
    var stateDim: Int { get }
    var pooledDim: Int { get }
    var maxTokens: Int { get }
    /// Parameters to train with the DiT (empty for a frozen encoder).
    func trainableParameters() -> [(String, Tensor)]
    func encode(_ prompts: [String]) -> (states: Tensor, mask: Tensor, pooled: Tensor)
}

/// Lower-cases and splits on anything that is not a letter or digit.
public struct WordTokenizer: Sendable {
    public let vocabularySize: Int
    public let maxTokens: Int
    public init(vocabularySize: Int, maxTokens: Int) {
        precondition(vocabularySize > 1, "vocabulary needs at least 2 entries (0 is padding)")
        self.vocabularySize = vocabularySize
        self.maxTokens = maxTokens
    }

    public func words(_ text: String) -> [String] {
        text.lowercased().split { !($0.isLetter || $0.isNumber) }.map(String.init)
    }

    /// Token ids in 1..<vocabularySize by a stable hash (FNV-1a) of each word; 0 is padding.
    /// Returns ids padded/truncated to `maxTokens` and the count of real tokens.
    public func encode(_ text: String) -> (ids: [Int], count: Int) {
        var ids = words(text).prefix(maxTokens).map { w -> Int in
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in w.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            return 1 + Int(h % UInt64(vocabularySize - 1))
        }
        let n = ids.count
        ids += [Int](repeating: 0, count: maxTokens - n)
        return (ids, n)
    }
}

/// A small trainable stand-in for the LLM + CLIP encoders: token and position embeddings, one
/// SiLU MLP layer with LayerNorm for the token states, and a masked-mean projection for the
/// pooled vector. Parameter paths are `text_encoder.*` in checkpoints.
public final class HashTextEncoder: Module, TextEncoder {
    public let token_embedding: Embedding
    public let position_embedding: Tensor   // [maxTokens, D]
    public let mlp: MLP
    public let norm: LayerNorm
    public let pooled_proj: Linear
    public let tokenizer: WordTokenizer
    public let stateDim: Int, pooledDim: Int

    public init(vocabularySize: Int = 4096, maxTokens: Int = 16, stateDim: Int, pooledDim: Int, seed: UInt64) {
        var rng = HVRandom(seed: seed).split("text-encoder-init")
        tokenizer = WordTokenizer(vocabularySize: vocabularySize, maxTokens: maxTokens)
        self.stateDim = stateDim; self.pooledDim = pooledDim
        token_embedding = Embedding(vocabularySize, stateDim, rng: &rng)
        position_embedding = Tensor.randn([maxTokens, stateDim], std: 0.02, rng: &rng)
        mlp = MLP(hidden: stateDim, inner: 2 * stateDim, activation: .silu, rng: &rng)
        norm = LayerNorm(stateDim)
        pooled_proj = Linear(stateDim, pooledDim, rng: &rng)
        super.init()
        for (path, p) in namedParameters() { p.name = "text_encoder." + path; p.requiresGrad = true }
    }

    public var maxTokens: Int { tokenizer.maxTokens }

    public func trainableParameters() -> [(String, Tensor)] { namedParameters(prefix: "text_encoder") }

    public func encode(_ prompts: [String]) -> (states: Tensor, mask: Tensor, pooled: Tensor) {
        encode(tokens: prompts.map { tokenizer.encode($0).ids })
    }

    /// The text mask [B, L] (1 = real token) of token ids as `tokenizer.encode` gives them, from
    /// the ids alone (pipeline stages after the first need it, not the encoder's weights).
    public func mask(tokens: [[Int]]) -> Tensor {
        let L = tokenizer.maxTokens
        var mask: [Float] = []
        for t in tokens {
            precondition(t.count == L, "token ids must be padded to \(L)")
            let n = t.firstIndex(of: 0) ?? L
            // An empty prompt keeps one (padding) token unmasked so attention has a key.
            mask += (0..<L).map { $0 < max(n, 1) ? 1 : 0 }
        }
        return Tensor(mask, shape: [tokens.count, L])
    }

    /// Encodes token ids as `tokenizer.encode` gives them (0-padded to `maxTokens`; real ids are
    /// never 0), e.g. captions tokenised ahead of time in a latent cache.
    public func encode(tokens: [[Int]]) -> (states: Tensor, mask: Tensor, pooled: Tensor) {
        let B = tokens.count, L = tokenizer.maxTokens
        let m = mask(tokens: tokens)
        var x = token_embedding(tokens.flatMap { $0 }, shape: [B, L]) + position_embedding
        x = norm(x + mlp(x))
        let mm = m.unsqueeze(-1)
        let pooled = pooled_proj((x * mm).sum(axis: 1) / mm.sum(axis: 1))
        return (x, m, pooled)
    }
}
