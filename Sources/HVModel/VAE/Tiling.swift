import HVTensor

/// Tiled decoding (official defaults scale: 256 px tiles at 192 px stride): latents are decoded
/// in overlapping spatial tiles and the overlaps are blended linearly, so memory is bounded by
/// the tile size. Receptive fields and the mid-block attention cross tile borders, so the
/// result is close to, not equal to, a whole decode (as in the official implementation).
extension CausalVAE {
    /// `tile` and `overlap` in latent pixels.
    public func tiledDecode(_ z: Tensor, tile: Int = 32, overlap: Int = 8) -> Tensor {
        let H = z.shape[3], W = z.shape[4]
        if H <= tile && W <= tile { return decode(z) }
        precondition(overlap > 0 && overlap < tile, "overlap must be in 1..<tile")
        let s = config.spatial_compression
        let stride = tile - overlap
        let blend = overlap * s
        func starts(_ n: Int) -> [Int] {
            var out = Array(Swift.stride(from: 0, to: max(n - overlap, 1), by: stride))
            if let last = out.last, last + tile < n { out.append(n - tile) }
            return out.map { min($0, max(0, n - tile)) }.reduce(into: [Int]()) { if $0.last != $1 { $0.append($1) } }
        }
        let ys = starts(H), xs = starts(W)
        // Decode every tile.
        var tiles: [[Tensor]] = []
        for y in ys {
            var row: [Tensor] = []
            for x in xs {
                let part = z.slice(axis: 3, start: y, length: min(tile, H - y)).slice(axis: 4, start: x, length: min(tile, W - x)).contiguous()
                row.append(decode(part))
            }
            tiles.append(row)
        }
        // Accumulate with linear weights in the overlaps (weights ramp over `blend` pixels).
        let out0 = tiles[0][0]
        let B = out0.shape[0], C = out0.shape[1], T = out0.shape[2]
        let Ho = H * s, Wo = W * s
        let acc = Tensor(zeros: [B, C, T, Ho, Wo]), wsum = Tensor(zeros: [Ho, Wo])
        for (iy, y) in ys.enumerated() {
            for (ix, x) in xs.enumerated() {
                let t = tiles[iy][ix]
                let th = t.shape[3], tw = t.shape[4]
                let oy = y * s, ox = x * s
                for py in 0..<th {
                    let wy: Float = iy > 0 && py < blend ? Float(py + 1) / Float(blend + 1) : (iy < ys.count - 1 && py >= th - blend ? Float(th - py) / Float(blend + 1) : 1)
                    for px in 0..<tw {
                        let wx: Float = ix > 0 && px < blend ? Float(px + 1) / Float(blend + 1) : (ix < xs.count - 1 && px >= tw - blend ? Float(tw - px) / Float(blend + 1) : 1)
                        let w = wy * wx
                        wsum.pointer[(oy + py) * Wo + ox + px] += w
                        for bc in 0..<(B * C) { for f in 0..<T {
                            acc.pointer[((bc * T + f) * Ho + oy + py) * Wo + ox + px] += w * t.pointer[((bc * T + f) * th + py) * tw + px]
                        }}
                    }
                }
            }
        }
        for bc in 0..<(B * C) { for f in 0..<T { for p in 0..<(Ho * Wo) { acc.pointer[(bc * T + f) * Ho * Wo + p] /= wsum.pointer[p] } } }
        return acc
    }
}
