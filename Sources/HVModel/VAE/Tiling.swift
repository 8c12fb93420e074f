import HVTensor

/// Tiled decoding and encoding, so memory is bounded by the tile size, not the video's.
///
/// Spatial (decode): latents are decoded in overlapping tiles (official defaults: 256 px tiles
/// at 192 px stride) and the overlaps blended linearly.
///
/// Temporal (decode and encode, official defaults: 64 (+1) frame tiles at 48-frame stride): a
/// tile covers latent frames s...s+tile (tile + 1 latents, 1 + 4·tile video frames); it is
/// processed on its own, so its first frame is encoded/decoded alone as the causal VAE treats
/// a video's first frame; for every tile after the first that frame is dropped (the previous
/// tile produced it with its history), the rest lines up with the global frame axis, and the
/// overlaps are blended with linear ramps. Every tile starts on a latent frame, so the 1 + 4k
/// structure holds per tile and each output frame comes from tiles that saw only it and earlier
/// frames plus the tile's own frames (causal convolutions, frame-causal attention).
///
/// Receptive fields, GroupNorm statistics and the mid-block attention cross tile borders, so
/// the result is close to, not equal to, a whole decode/encode (as in the official code).
extension CausalVAE {
    /// Called after every decoded tile with its latent frame count and spatial origin (memory
    /// traces of `hv-bench vae-decode`); nil by default.
    nonisolated(unsafe) public static var afterDecodedTile: ((_ frames: Int, _ y: Int, _ x: Int) -> Void)?

    /// Hands the heap's free pages back to the kernel (before a decode and after every tile).
    /// hv's executables keep freed blocks in the heap (`HVRuntime.configureProcess`), and a
    /// tile's activations come in many sizes: measured on 4 tiles of 13 x 144 x 144, glibc held
    /// 4.36 GiB of heap for 0.93 GiB of live blocks. Costs milliseconds.
    static func releaseTileMemory() { HVRuntime.trimHeap() }

    /// Spatial `tile`/`overlap` in latent pixels; `temporalTile`/`temporalOverlap` in latent
    /// frames (official: 16 and 4, i.e. 64 + 1 frames at a 48-frame stride).
    ///
    /// Memory: activations are allocated as mmap-ed blocks and unmapped when freed for the
    /// duration (`HVRuntime.withResidentMemory`), and the heap is trimmed after every tile, so
    /// the resident peak is one tile's live peak (BENCHMARKS.md, "Tiled decode memory").
    public func tiledDecode(_ z: Tensor, tile: Int = 32, overlap: Int = 8, temporalTile: Int = 16, temporalOverlap: Int = 4) -> Tensor {
        CausalVAE.releaseTileMemory()
        return HVRuntime.withResidentMemory {
            CausalVAE.temporalTiledDecode(z, tile: temporalTile, overlap: temporalOverlap, compression: config.temporal_compression) {
                self.spatialTiledDecode($0, tile: tile, overlap: overlap)
            }
        }
    }

    /// Posterior moments [B, 2·latent, T', H/8, W/8] (mean, then logvar) of `x`, in temporal
    /// tiles, each in spatial tiles of `tile` latent pixels (`tile` x 8 video pixels) overlapping
    /// by `overlap` latent pixels.
    public func tiledEncodeMoments(_ x: Tensor, tile: Int = 32, overlap: Int = 8, temporalTile: Int = 16, temporalOverlap: Int = 4) -> Tensor {
        CausalVAE.temporalTiledEncode(x, tile: temporalTile, overlap: temporalOverlap, compression: config.temporal_compression) {
            self.spatialTiledEncodeMoments($0, tile: tile, overlap: overlap)
        }
    }

    /// Spatial tiles only: the moments of `x`, tiles of `tile` latent pixels blended over `overlap`.
    public func spatialTiledEncodeMoments(_ x: Tensor, tile: Int = 32, overlap: Int = 8) -> Tensor {
        let s = config.spatial_compression
        let H = x.shape[3] / s, W = x.shape[4] / s
        if H <= tile && W <= tile { return quant_conv(encoder(x)) }
        precondition(overlap > 0 && overlap < tile, "overlap must be in 1..<tile")
        let ys = CausalVAE.tileStarts(H, tile: tile, overlap: overlap), xs = CausalVAE.tileStarts(W, tile: tile, overlap: overlap)
        var out: Tensor? = nil, wsum = [Float](repeating: 0, count: H * W)
        for (iy, y) in ys.enumerated() {
            for (ix, x0) in xs.enumerated() {
                let part = x.slice(axis: 3, start: y * s, length: min(tile, H - y) * s).slice(axis: 4, start: x0 * s, length: min(tile, W - x0) * s).contiguous()
                let t = quant_conv(encoder(part)).contiguous()
                let BC = t.shape[0] * t.shape[1], T = t.shape[2], th = t.shape[3], tw = t.shape[4]
                let acc = out ?? Tensor(zeros: [t.shape[0], t.shape[1], T, H, W])
                out = acc
                // Linear ramps over the overlaps with the previous/next tile in each direction.
                func ramp(_ p: Int, _ n: Int, _ hasPrev: Bool, _ hasNext: Bool, _ prevOverlap: Int, _ nextOverlap: Int) -> Float {
                    var w: Float = 1
                    if hasPrev && p < prevOverlap { w *= Float(p + 1) / Float(prevOverlap + 1) }
                    if hasNext && p >= n - nextOverlap { w *= Float(n - p) / Float(nextOverlap + 1) }
                    return w
                }
                let prevY = iy > 0 ? ys[iy - 1] + tile - y : 0, nextY = iy + 1 < ys.count ? y + th - ys[iy + 1] : 0
                let prevX = ix > 0 ? xs[ix - 1] + tile - x0 : 0, nextX = ix + 1 < xs.count ? x0 + tw - xs[ix + 1] : 0
                for py in 0..<th {
                    let wy = ramp(py, th, iy > 0, iy + 1 < ys.count, prevY, nextY)
                    for px in 0..<tw {
                        let w = wy * ramp(px, tw, ix > 0, ix + 1 < xs.count, prevX, nextX)
                        wsum[(y + py) * W + x0 + px] += w
                        for bc in 0..<BC { for f in 0..<T {
                            acc.pointer[((bc * T + f) * H + y + py) * W + x0 + px] += w * t.pointer[((bc * T + f) * th + py) * tw + px]
                        }}
                    }
                }
            }
        }
        let acc = out!
        let planes = acc.count / (H * W)
        for k in 0..<planes { for p in 0..<(H * W) { acc.pointer[k * H * W + p] /= wsum[p] } }
        return acc
    }

    /// Tile starts along an axis of `n` latent pixels: stride tile - overlap, the last tile flush with the end.
    static func tileStarts(_ n: Int, tile: Int, overlap: Int) -> [Int] {
        if n <= tile { return [0] }
        var out = Array(Swift.stride(from: 0, to: n - tile, by: tile - overlap))
        out.append(n - tile)
        return out.reduce(into: [Int]()) { if $0.last != $1 { $0.append($1) } }
    }

    /// `encode` in temporal and spatial tiles: (mean, logvar clamped to [-30, 20]).
    public func tiledEncode(_ x: Tensor, tile: Int = 32, overlap: Int = 8, temporalTile: Int = 16, temporalOverlap: Int = 4) -> (mean: Tensor, logvar: Tensor) {
        let T = x.shape[2], H = x.shape[3], W = x.shape[4]
        let s = config.spatial_compression, tc = config.temporal_compression
        precondition((T - 1) % tc == 0 && H % s == 0 && W % s == 0,
                     "VAE input \(T)x\(H)x\(W): frames must be 1 + \(tc)k and height/width multiples of \(s)")
        let moments = tiledEncodeMoments(x, tile: tile, overlap: overlap, temporalTile: temporalTile, temporalOverlap: temporalOverlap).chunk(2, axis: 1)
        return (moments[0], moments[1].clamp(min: -30, max: 20))
    }

    /// Latent-frame ranges (inclusive) of the temporal tiles of `n` latent frames: starts
    /// 0, stride, 2·stride ... (stride = tile - overlap) until a tile reaches the last frame.
    public static func temporalTileRanges(latentFrames n: Int, tile: Int, overlap: Int) -> [ClosedRange<Int>] {
        precondition(tile >= 1 && overlap >= 0 && overlap < tile, "temporal tile must be >= 1 and overlap in 0..<tile")
        var out: [ClosedRange<Int>] = []
        var s = 0
        while true {
            let e = min(s + tile, n - 1)
            out.append(s...e)
            if e == n - 1 { return out }
            s += tile - overlap
        }
    }

    /// Temporal tiling of a causal decoder: `decode` maps L latent frames to 1 + tc·(L-1) frames.
    public static func temporalTiledDecode(_ z: Tensor, tile: Int, overlap: Int, compression tc: Int, decode: (Tensor) -> Tensor) -> Tensor {
        let n = z.shape[2]
        let ranges = temporalTileRanges(latentFrames: n, tile: tile, overlap: overlap)
        if ranges.count == 1 { return decode(z) }
        let pieces = ranges.map { r -> (Tensor, Int) in
            let out = decode(z.slice(axis: 2, start: r.lowerBound, length: r.count).contiguous())
            if r.lowerBound == 0 { return (out, 0) }
            return (out.slice(axis: 2, start: 1, length: out.shape[2] - 1).contiguous(), tc * r.lowerBound + 1)
        }
        return blendAlongTime(pieces, frames: 1 + tc * (n - 1))
    }

    /// Temporal tiling of a causal encoder: `encode` maps 1 + tc·k frames to 1 + k latent frames.
    public static func temporalTiledEncode(_ x: Tensor, tile: Int, overlap: Int, compression tc: Int, encode: (Tensor) -> Tensor) -> Tensor {
        let T = x.shape[2]
        precondition((T - 1) % tc == 0, "\(T) frames are not 1 + \(tc)k")
        let n = 1 + (T - 1) / tc
        let ranges = temporalTileRanges(latentFrames: n, tile: tile, overlap: overlap)
        if ranges.count == 1 { return encode(x) }
        let pieces = ranges.map { r -> (Tensor, Int) in
            let out = encode(x.slice(axis: 2, start: tc * r.lowerBound, length: tc * (r.count - 1) + 1).contiguous())
            if r.lowerBound == 0 { return (out, 0) }
            return (out.slice(axis: 2, start: 1, length: out.shape[2] - 1).contiguous(), r.lowerBound + 1)
        }
        return blendAlongTime(pieces, frames: n)
    }

    /// Assembles pieces [B, C, F_k, H, W] that cover global frames first_k ..< first_k + F_k
    /// (consecutive pieces overlap) into [B, C, frames, H, W], weighting each piece with a
    /// linear ramp across its overlaps with its neighbours (weights sum to 1 in every frame).
    static func blendAlongTime(_ pieces: [(Tensor, Int)], frames total: Int) -> Tensor {
        let s0 = pieces[0].0.shape
        let B = s0[0], C = s0[1], H = s0[3], W = s0[4], plane = H * W
        let acc = Tensor(zeros: [B, C, total, H, W])
        var wsum = [Float](repeating: 0, count: total)
        for (k, (t, first)) in pieces.enumerated() {
            let F = t.shape[2], end = first + F
            let prevEnd = k > 0 ? pieces[k - 1].1 + pieces[k - 1].0.shape[2] : first
            let nextFirst = k + 1 < pieces.count ? pieces[k + 1].1 : end
            for f in first..<min(end, total) {
                var w: Float = 1
                if f < prevEnd { w *= Float(f - first + 1) / Float(prevEnd - first + 1) }
                if f >= nextFirst { w *= Float(end - f) / Float(end - nextFirst + 1) }
                wsum[f] += w
                for bc in 0..<(B * C) {
                    let src = t.pointer + (bc * F + f - first) * plane, dst = acc.pointer + (bc * total + f) * plane
                    for p in 0..<plane { dst[p] += w * src[p] }
                }
            }
        }
        for bc in 0..<(B * C) { for f in 0..<total {
            let dst = acc.pointer + (bc * total + f) * plane, inv = 1 / wsum[f]
            for p in 0..<plane { dst[p] *= inv }
        }}
        return acc
    }

    /// Spatial tiles only; `tile` and `overlap` in latent pixels.
    public func spatialTiledDecode(_ z: Tensor, tile: Int = 32, overlap: Int = 8) -> Tensor {
        let H = z.shape[3], W = z.shape[4]
        if H <= tile && W <= tile {
            let out = decode(z)
            CausalVAE.releaseTileMemory()
            CausalVAE.afterDecodedTile?(z.shape[2], 0, 0)
            return out
        }
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
                CausalVAE.releaseTileMemory()
                CausalVAE.afterDecodedTile?(z.shape[2], y, x)
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
