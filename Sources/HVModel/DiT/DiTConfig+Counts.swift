/// Parameter and FLOP counts from the config alone (no allocation), for `hv-coord plan` and
/// the scaling tools.
extension DiTConfig {
    /// Exact number of parameters `HunyuanDiT(config:)` allocates.
    public var parameterCount: Int {
        let p = partParameterCounts
        return p.stem + mm_double_blocks_depth * p.doubleBlock + mm_single_blocks_depth * p.singleBlock + p.finalLayer
    }

    /// Parameters of the stem (patch, text, time, vector and guidance embeddings and the token
    /// refiner), of one dual-stream block, one single-stream block and the final layer: what each
    /// pipeline stage holds.
    public var partParameterCounts: (stem: Int, doubleBlock: Int, singleBlock: Int, finalLayer: Int) {
        let H = hidden_size, M = mlpHidden, F = 256, P = patchVolume
        func linear(_ i: Int, _ o: Int) -> Int { i * o + o }
        let embedder = linear(F, H) + linear(H, H)
        let refinerBlock = 2 * H + linear(H, 3 * H) + linear(H, H) + 2 * H + linear(H, 4 * H) + linear(4 * H, H) + linear(H, 2 * H)
        let txtIn = linear(text_states_dim, H) + embedder + linear(text_states_dim, H) + linear(H, H) + refiner_depth * refinerBlock
        let qk = qk_norm ? 2 * headDim : 0
        let stream = linear(H, 6 * H) + linear(H, 3 * H) + qk + linear(H, H) + linear(H, M) + linear(M, H)
        let single = linear(H, 3 * H + M) + linear(H + M, H) + qk + linear(H, 3 * H)
        let final = linear(H, P * out_channels) + linear(H, 2 * H)
        let stem = in_channels * P * H + H + txtIn + embedder + linear(text_states_dim_2, H) + linear(H, H) + (guidance_embed ? embedder : 0)
        return (stem, 2 * stream, single, final)
    }

    /// Training FLOPs (forward + backward = 3x forward) for one sample with `videoTokens`
    /// image tokens and `textTokens` text tokens: 2 FLOPs per multiply-add in every linear
    /// layer, plus attention's QK^T and PV products (4 * S^2 * H per layer forward), which the
    /// 6·N·D rule leaves out and which dominates for long videos.
    public func trainingFLOPs(videoTokens N: Int, textTokens L: Int) -> Double {
        let H = Double(hidden_size), M = Double(mlpHidden), S = Double(N + L)
        let n = Double(N), l = Double(L)
        // Linear layers per block (forward, 2 FLOPs per MAC).
        let doubleLinear = 2 * (n + l) * (3 * H * H + H * H + 2 * H * M)
        let singleLinear = 2 * S * (H * (3 * H + M) + (H + M) * H)
        let attention = 4 * S * S * H
        let refiner = Double(refiner_depth) * (2 * l * (3 * H * H + H * H + 8 * H * H) + 4 * l * l * H)
        let embed = 2 * n * Double(in_channels * patchVolume) * H + 2 * l * Double(text_states_dim) * H
            + 2 * n * H * Double(patchVolume * out_channels)
        let forward = Double(mm_double_blocks_depth) * (doubleLinear + attention)
            + Double(mm_single_blocks_depth) * (singleLinear + attention) + refiner + embed
        return 3 * forward
    }

    /// Video tokens for a latent of (T, H, W) after patching.
    public func videoTokens(latentT: Int, latentH: Int, latentW: Int) -> Int {
        (latentT / patch_size[0]) * (latentH / patch_size[1]) * (latentW / patch_size[2])
    }
}
