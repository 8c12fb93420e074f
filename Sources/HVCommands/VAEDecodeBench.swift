import ArgumentParser
import Foundation
import HVModel
import HVTensor
import HVTrain

/// `hv-bench vae-decode`: peak RSS of a tiled decode (spatial + temporal tiles) of a video
/// of the given size with the given VAE config (random weights: memory and time do not depend
/// on the values). Peak RSS is the kernel's high-water mark (VmHWM in /proc/self/status).
struct VAEDecodeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vae-decode",
        abstract: "Peak RSS and time of a tiled VAE decode (default: the full HunyuanVideo VAE, 33x256x256).")

    @Option(help: "VAE config YAML.") var config = "configs/vae/hunyuan-vae.yaml"
    @Option(help: "Video frames (1 + 4k).") var frames = 33
    @Option(help: "Video height and width in pixels (multiple of 8).") var size = 256
    @Option(help: "Spatial tile in latent pixels (official: 32 = 256 px).") var tile = 32
    @Option(help: "Spatial overlap in latent pixels (official: 8 = 64 px).") var overlap = 8
    @Option(help: "Temporal tile in latent frames (a tile decodes tile + 1 latent frames, 1 + 4 x tile video frames).") var temporalTile = 3
    @Option(help: "Temporal overlap in latent frames.") var temporalOverlap = 1
    @Option(help: "OpenBLAS threads (default: all cores).") var threads: Int?

    static func statusKB(_ key: String) -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix(key + ":") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    func run() throws {
        try runOrExit {
            if let threads { BLAS.threads = threads; Parallel.threads = threads }
            let c = try loadVAEConfig(path: config)
            guard (frames - 1) % c.temporal_compression == 0, size % c.spatial_compression == 0 else {
                throw ValidationError("--frames must be 1 + \(c.temporal_compression)k and --size a multiple of \(c.spatial_compression)")
            }
            let vae = CausalVAE(config: c, seed: 0)
            let lt = c.latentFrames(frames), ls = size / c.spatial_compression
            var rng = HVRandom(seed: 1)
            let z = Tensor.randn([1, c.latent_channels, lt, ls, ls], rng: &rng)
            let before = Self.statusKB("VmHWM")
            print("OpenBLAS \(BLAS.coreName) | threads \(BLAS.threads) | load average \(String(format: "%.1f", loadAverage()))")
            print("VAE \(config): \(vae.parameterCount.formatted()) parameters; latents \(z.shape) -> video \(frames)x\(size)x\(size)")
            print("tiles: spatial \(tile) latent px (overlap \(overlap)), temporal \(temporalTile)+1 latent frames (overlap \(temporalOverlap)); temporal tiles: \(CausalVAE.temporalTileRanges(latentFrames: lt, tile: temporalTile, overlap: temporalOverlap).map { "\($0.lowerBound)...\($0.upperBound)" }.joined(separator: " "))")
            let t0 = Date()
            if ProcessInfo.processInfo.environment["HV_TRACE_MEMORY"].map({ $0 != "0" && !$0.isEmpty }) ?? false {
                // Per tile: resident now, high-water, and glibc's heap (taken from the kernel vs live).
                CausalVAE.afterDecodedTile = { frames, y, x in
                    let h = HVRuntime.heapStats(), gib: (Int) -> Double = { Double($0) / 1073741824 }
                    print(String(format: "tile %ld frames @ (%ld, %ld) %.0fs: RSS %.2f GiB, peak %.2f GiB; heap %.2f GiB (%.2f live), mmap %.2f GiB",
                                 frames, y, x, Date().timeIntervalSince(t0), gib(Self.statusKB("VmRSS") * 1024), gib(Self.statusKB("VmHWM") * 1024),
                                 gib(h.arena), gib(h.inUse), gib(h.mmapped)))
                }
            }
            let video = GradMode.withoutGrad {
                vae.tiledDecode(z, tile: tile, overlap: overlap, temporalTile: temporalTile, temporalOverlap: temporalOverlap)
            }
            let seconds = Date().timeIntervalSince(t0)
            let peak = Self.statusKB("VmHWM")
            print("output \(video.shape)")
            print(String(format: "tiled decode %.1fs; peak RSS %.2f GiB (%.2f GiB before decoding: weights + latents)",
                         seconds, Double(peak) / 1048576, Double(before) / 1048576))
            print(String(format: "load average after: %.1f", loadAverage()))
        }
    }

    func loadAverage() -> Double {
        var l = [Double](repeating: 0, count: 3)
        return getloadavg(&l, 3) > 0 ? l[0] : -1
    }
}
