import Foundation
import HVData
import HVModel
import HVNN
import HVTensor

/// `hv-data encode`: runs the VAE encoder over a manifest's clips and caches
/// posterior mean x scaling_factor with the tokenised caption (see LatentCache.swift).
public enum LatentEncoding {
    public struct Options: Sendable {
        public var shardSize = 256
        /// Also cache each clip's first frame as a 1-frame (image) sample, for joint image+video training.
        public var imageSamples = false
        public var vocabSize = RunConfig.TextEncoderConfig().vocab_size
        public var maxTokens = RunConfig.TextEncoderConfig().max_tokens
        /// Encode in temporal tiles of this many latent frames (+1) when a clip is longer (0 = never).
        public var temporalTile = 0
        public var temporalOverlap = 4
        /// Encode in spatial tiles of this many latent pixels when a frame is larger (0 = never).
        public var spatialTile = 0
        public var spatialOverlap = 8
        public init() {}
    }

    /// RGB24 frames -> [1, 3, T, H, W] in [-1, 1] (the VAE's input range).
    public static func videoTensor(_ frames: [VideoFrame]) -> Tensor {
        let T = frames.count, H = frames[0].height, W = frames[0].width
        let x = Tensor(uninitialized: [1, 3, T, H, W])
        for (t, f) in frames.enumerated() {
            f.rgb.withUnsafeBufferPointer { p in
                for i in 0..<(H * W) { for c in 0..<3 {
                    x.pointer[(c * T + t) * H * W + i] = Float(p[i * 3 + c]) / 127.5 - 1
                }}
            }
        }
        return x
    }

    /// Latent of a [1, 3, T, H, W] video: posterior mean x scaling factor, [C, T', H/8, W/8].
    public static func latent(_ vae: CausalVAE, _ x: Tensor, options o: Options = .init()) -> Tensor {
        GradMode.withoutGrad {
            let never = 1 << 20
            let mean = o.temporalTile > 0 || o.spatialTile > 0
                ? vae.tiledEncode(x, tile: o.spatialTile > 0 ? o.spatialTile : never, overlap: o.spatialOverlap,
                                  temporalTile: o.temporalTile > 0 ? o.temporalTile : never, temporalOverlap: o.temporalOverlap).mean
                : vae.encode(x).mean
            return (mean * Float(vae.config.scaling_factor)).squeeze(0).contiguous()
        }
    }

    /// The caption text of an entry: the short description of a structured caption.
    public static func captionText(_ e: ManifestEntry) -> String { e.caption?.short_description ?? "" }

    /// Encodes every entry of `manifest` into a cache at `out`. Unreadable clips are skipped and
    /// logged (and listed in index.json); a bad manifest or VAE file throws.
    @discardableResult
    public static func encode(manifest manifestPath: String, vae vaePath: String, out: String, options o: Options = .init(),
                              log: (String) -> Void = { _ in }) throws -> LatentCacheIndex {
        let manifest = try Manifest.read(manifestPath)
        let vae = try VAEWeights.load(path: vaePath)
        let tokenizer = WordTokenizer(vocabularySize: o.vocabSize, maxTokens: o.maxTokens)
        let s = vae.config.spatial_compression, tc = vae.config.temporal_compression
        let writer = try LatentCacheWriter(directory: out, vae: vaePath, vaeConfig: vae.config, tokenizer: tokenizer, shardSize: o.shardSize)
        for (n, e) in manifest.entries.enumerated() {
            let bucket = try ClipLoader.bucket(of: e, manifest: manifestPath)
            guard bucket.width % s == 0, bucket.height % s == 0, (bucket.frames - 1) % tc == 0 else {
                throw DataError.invalidArgument("manifest '\(manifestPath)' entry \(e.label): bucket \(bucket) does not fit the VAE (sides multiples of \(s), frames 1 + \(tc)k)")
            }
            let frames: [VideoFrame]
            do { frames = try ClipLoader.load(path: manifest.resolve(e), startFrame: e.start_frame ?? 0, bucket: bucket) } catch {
                log("hv-data: skipping \(e.label): \(error)")
                writer.skip("\(e.label): \(error)")
                continue
            }
            let caption = captionText(e)
            let tokens = tokenizer.encode(caption).ids
            let z = latent(vae, videoTensor(frames), options: o)
            try writer.append(latent: z, tokens: tokens, caption: caption, bucket: bucket.description, source: e.label)
            if o.imageSamples && bucket.frames > 1 {
                let image = ClipLoader.Bucket(width: bucket.width, height: bucket.height, frames: 1)
                try writer.append(latent: latent(vae, videoTensor([frames[0]]), options: o), tokens: tokens, caption: caption,
                                  bucket: image.description, source: e.label + "#frame0")
            }
            if (n + 1) % 25 == 0 || n + 1 == manifest.entries.count { log("hv-data: encoded \(n + 1)/\(manifest.entries.count) entries") }
        }
        let index = try writer.finish()
        if index.samples.isEmpty { throw LatentCacheError.noSamples(directory: out) }
        return index
    }
}
