import Foundation
import HVCheckpoint
import HVData
import HVModel
import HVNN
import HVTensor

// The latent cache `hv-data encode` writes and the DiT trainer reads (`data: kind: latent-cache`):
//
//   DIR/index.json         written last (atomically): format, VAE, tokenizer, shards, one entry per sample
//   DIR/shard-NNNNN.h5     samples/<id>/latent  float32 [C, T, H, W] = posterior mean x scaling_factor (Fletcher-32)
//                          samples/<id>/tokens  int32 [max_tokens], 0-padded caption token ids
//                          attributes per sample: caption, bucket, source
//
// It lives in HVTrain rather than HVData because it needs the VAE (HVModel) and HDF5
// (HVCheckpoint); HVData stays a libav-only module.

public enum LatentCacheError: Error, CustomStringConvertible {
    case missingIndex(directory: String)
    case badIndex(file: String, reason: String)
    case missingShard(file: String)
    case corruptShard(file: String, detail: String)
    case mismatch(directory: String, field: String, message: String)
    case noSamples(directory: String)

    public var description: String {
        switch self {
        case .missingIndex(let d): "latent cache '\(d)': no index.json (write one with hv-data encode --vae CKPT --manifest M --out \(d))"
        case .badIndex(let f, let r): "latent cache index '\(f)': \(r)"
        case .missingShard(let f): "latent cache shard '\(f)' is missing (listed in index.json); re-run hv-data encode"
        case .corruptShard(let f, let d): "latent cache shard '\(f)' is corrupt or unreadable: \(d); re-run hv-data encode"
        case .mismatch(let d, let field, let m): "latent cache '\(d)' does not fit the run config: field '\(field)': \(m)"
        case .noSamples(let d): "latent cache '\(d)' holds no samples"
        }
    }
}

/// `index.json` of a latent cache.
public struct LatentCacheIndex: Codable, Sendable, Equatable {
    public static let format = "hv-latent-cache"
    public static let currentVersion = 1
    public static let fileName = "index.json"

    public struct Shard: Codable, Sendable, Equatable {
        public var file: String
        public var count: Int
    }
    public struct Sample: Codable, Sendable, Equatable {
        /// Shard file (relative to the cache directory) and group name inside it.
        public var shard: String
        public var name: String
        /// Latent shape [C, T, H, W].
        public var shape: [Int]
        /// Bucket "WxHxT" in pixels and video frames.
        public var bucket: String
        public var source: String
        public var caption: String
    }

    public var format = LatentCacheIndex.format
    public var version = LatentCacheIndex.currentVersion
    public var vae: String
    public var vae_config: VAEConfig
    public var scaling_factor: Double
    public var vocab_size: Int
    public var max_tokens: Int
    public var shards: [Shard]
    public var samples: [Sample]
    /// Manifest entries that could not be encoded, with the reason.
    public var skipped: [String]
}

/// Writes a latent cache: samples go into shards of `shardSize`; each shard is written under a
/// temporary name and renamed when complete; the index is written last.
public final class LatentCacheWriter {
    public let directory: String
    public let shardSize: Int
    var index: LatentCacheIndex
    private var current: H5File?
    private var currentName = ""
    private var currentCount = 0

    public init(directory: String, vae: String, vaeConfig: VAEConfig, tokenizer: WordTokenizer, shardSize: Int) throws {
        precondition(shardSize >= 1)
        self.directory = directory
        self.shardSize = shardSize
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // A stale index would describe shards about to be overwritten.
        try? FileManager.default.removeItem(atPath: directory + "/" + LatentCacheIndex.fileName)
        index = LatentCacheIndex(vae: vae, vae_config: vaeConfig, scaling_factor: vaeConfig.scaling_factor,
                                 vocab_size: tokenizer.vocabularySize, max_tokens: tokenizer.maxTokens, shards: [], samples: [], skipped: [])
    }

    static func shardName(_ i: Int) -> String { String(format: "shard-%05d.h5", i) }

    /// Appends one sample: `latent` [C, T, H, W] (already scaled), `tokens` [max_tokens].
    public func append(latent: Tensor, tokens: [Int], caption: String, bucket: String, source: String) throws {
        if current == nil {
            currentName = Self.shardName(index.shards.count)
            current = try H5File(path: directory + "/" + currentName + ".tmp", mode: .create)
            try current!.setAttribute("format", .string(LatentCacheIndex.format))
            currentCount = 0
        }
        let f = current!
        let name = String(format: "%06d", index.samples.count)
        let g = try f.createGroup("samples/" + name)
        try g.write("latent", latent.contiguous().scalars, shape: latent.shape, options: H5DatasetOptions(fletcher32: true))
        try g.write("tokens", tokens.map { Int32($0) }, shape: [tokens.count], options: H5DatasetOptions(fletcher32: true))
        try g.setAttribute("caption", .string(caption))
        try g.setAttribute("bucket", .string(bucket))
        try g.setAttribute("source", .string(source))
        index.samples.append(.init(shard: currentName, name: name, shape: latent.shape, bucket: bucket, source: source, caption: caption))
        currentCount += 1
        if currentCount == shardSize { try closeShard() }
    }

    public func skip(_ reason: String) { index.skipped.append(reason) }

    private func closeShard() throws {
        guard let f = current else { return }
        try f.setAttribute("count", .int64(Int64(currentCount)))
        try f.close()
        current = nil
        let path = directory + "/" + currentName
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: path + ".tmp", toPath: path)
        index.shards.append(.init(file: currentName, count: currentCount))
    }

    /// Closes the last shard and writes index.json. Returns the index.
    @discardableResult
    public func finish() throws -> LatentCacheIndex {
        try closeShard()
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try enc.encode(index).write(to: URL(fileURLWithPath: directory + "/" + LatentCacheIndex.fileName), options: .atomic)
        return index
    }
}

/// Reads a latent cache. Opening checks the index and that every shard exists and opens as the
/// cache's HDF5 file with the listed sample count; reading a sample verifies its checksums.
/// Errors name the file. Not thread-safe.
public final class LatentCache {
    public let directory: String
    public let index: LatentCacheIndex
    /// Sample ids grouped by latent shape [C, T, H, W], in a fixed order (by shape).
    public let buckets: [(shape: [Int], samples: [Int])]
    private var files: [String: H5File] = [:]

    public init(directory: String) throws {
        self.directory = directory
        let indexPath = directory + "/" + LatentCacheIndex.fileName
        guard FileManager.default.fileExists(atPath: indexPath) else { throw LatentCacheError.missingIndex(directory: directory) }
        do {
            index = try JSONDecoder().decode(LatentCacheIndex.self, from: Data(contentsOf: URL(fileURLWithPath: indexPath)))
        } catch let e as DecodingError {
            throw LatentCacheError.badIndex(file: indexPath, reason: "not a latent cache index: \(e)")
        }
        guard index.format == LatentCacheIndex.format else { throw LatentCacheError.badIndex(file: indexPath, reason: "format is '\(index.format)', expected \(LatentCacheIndex.format)") }
        guard index.version == LatentCacheIndex.currentVersion else {
            throw LatentCacheError.badIndex(file: indexPath, reason: "version \(index.version); this hv reads \(LatentCacheIndex.currentVersion)")
        }
        guard !index.samples.isEmpty else { throw LatentCacheError.noSamples(directory: directory) }
        let listed = Set(index.shards.map(\.file))
        if let bad = index.samples.first(where: { !listed.contains($0.shard) || $0.shape.count != 4 }) {
            throw LatentCacheError.badIndex(file: indexPath, reason: "sample \(bad.name) names shard '\(bad.shard)' or shape \(bad.shape) that is not valid")
        }
        let channels = index.vae_config.latent_channels
        for s in index.samples {
            guard s.shape.allSatisfy({ $0 >= 1 }), s.shape[0] == channels, let n = checkedShapeCount(s.shape), n <= 1 << 28 else {
                throw LatentCacheError.badIndex(file: indexPath, reason: "sample \(s.name) has shape \(s.shape); expected [C, T, H, W] with C = vae_config.latent_channels \(channels), every size >= 1 and at most 2^28 values")
            }
        }
        for s in index.shards {
            let path = directory + "/" + s.file
            guard FileManager.default.fileExists(atPath: path) else { throw LatentCacheError.missingShard(file: path) }
            let f: H5File
            do {
                f = try H5File(path: path, mode: .readOnly)
                let count = try f.int64Attribute("count")
                guard Int(count) == s.count else {
                    throw LatentCacheError.corruptShard(file: path, detail: "holds \(count) samples, index.json says \(s.count)")
                }
            } catch let e as LatentCacheError { throw e } catch { throw LatentCacheError.corruptShard(file: path, detail: "\(error)") }
            files[s.file] = f
        }
        var byShape: [[Int]: [Int]] = [:]
        for (i, s) in index.samples.enumerated() { byShape[s.shape, default: []].append(i) }
        buckets = byShape.keys.sorted { $0.lexicographicallyPrecedes($1) }.map { ($0, byShape[$0]!) }
    }

    public var count: Int { index.samples.count }
    public var tokenizer: WordTokenizer { WordTokenizer(vocabularySize: index.vocab_size, maxTokens: index.max_tokens) }

    /// Sample `i`: latent [C, T, H, W], token ids [max_tokens] and the caption.
    public func sample(_ i: Int) throws -> (latent: Tensor, tokens: [Int], caption: String) {
        let s = index.samples[i]
        let path = directory + "/" + s.shard
        guard let f = files[s.shard] else { throw LatentCacheError.missingShard(file: path) }
        do {
            // Checked before reading: the shapes index.json gives, and the Fletcher-32 filter
            // that lets HDF5 verify the values (a dataset without it could hold anything).
            let latentSet = try f.dataset("samples/\(s.name)/latent"), tokenSet = try f.dataset("samples/\(s.name)/tokens")
            let latentShape = try latentSet.shape(), tokenShape = try tokenSet.shape()
            guard latentShape == s.shape, tokenShape == [index.max_tokens] else {
                throw LatentCacheError.corruptShard(file: path, detail: "sample \(s.name) has latent shape \(latentShape) / tokens \(tokenShape), index.json says \(s.shape) / [\(index.max_tokens)]")
            }
            guard try latentSet.filters().contains(.fletcher32), try tokenSet.filters().contains(.fletcher32) else {
                throw LatentCacheError.corruptShard(file: path, detail: "sample \(s.name) is stored without the Fletcher-32 checksum hv-data encode writes")
            }
            let values = try latentSet.read(as: Float.self)
            let tokens = try tokenSet.read(as: Int32.self)
            guard values.allSatisfy(\.isFinite) else {
                throw LatentCacheError.corruptShard(file: path, detail: "sample \(s.name) has non-finite latent values")
            }
            if let bad = tokens.first(where: { $0 < 0 || Int($0) >= index.vocab_size }) {
                throw LatentCacheError.corruptShard(file: path, detail: "sample \(s.name) has token id \(bad) outside 0..<vocab_size \(index.vocab_size)")
            }
            return (Tensor(values, shape: s.shape), tokens.map { Int($0) }, s.caption)
        } catch let e as LatentCacheError { throw e } catch {
            throw LatentCacheError.corruptShard(file: path, detail: "sample \(s.name): \(error)")
        }
    }

    /// Stacks samples of one shape: latents [B, C, T, H, W], token ids, captions.
    public func batch(_ ids: [Int]) throws -> (latents: Tensor, tokens: [[Int]], captions: [String]) {
        let items = try ids.map { try sample($0) }
        let x = Tensor.concat(items.map { $0.latent.unsqueeze(0) }, axis: 0)
        return (x, items.map(\.tokens), items.map(\.caption))
    }

    /// The batches of `epoch` for global batch size `B`: every bucket's samples in a seeded
    /// order, cut into batches of B (the last one of a bucket wraps around to its start), so a
    /// batch never mixes shapes. Batch slots are in bucket order; `DataOrder` shuffles the slots.
    public func batchPlan(epoch: Int, batchSize B: Int, seed: UInt64) -> [[Int]] {
        var out: [[Int]] = []
        for (b, bucket) in buckets.enumerated() {
            var rng = HVRandom(seed: seed).split("latent-cache-bucket").split(UInt64(b)).split(UInt64(epoch))
            let perm = rng.permutation(bucket.samples.count).map { bucket.samples[$0] }
            let n = perm.count
            for j in 0..<((n + B - 1) / B) { out.append((0..<B).map { perm[(j * B + $0) % n] }) }
        }
        return out
    }

    /// Batch slots per epoch for global batch size `B`.
    public func slotsPerEpoch(batchSize B: Int) -> Int { buckets.reduce(0) { $0 + ($1.samples.count + B - 1) / B } }
}

/// VAE weights as `hv-coord train-vae --out` writes them: one dataset per parameter under its
/// official name and the config as the `vae_config` attribute (JSON).
public enum VAEWeights {
    public static func load(path: String) throws -> CausalVAE {
        let f = try H5File(path: path, mode: .readOnly)
        defer { try? f.close() }
        let vae = CausalVAE(config: try config(of: f, path: path), seed: 0)
        try ModelWeights.load(vae.namedParameters(), from: f, file: path)
        return vae
    }

    /// Loads the weights of `path` into `vae`, whose config must be the file's (same widths, layers
    /// and channels); a different one is an error naming both.
    public static func load(into vae: CausalVAE, path: String) throws {
        let f = try H5File(path: path, mode: .readOnly)
        defer { try? f.close() }
        let saved = try config(of: f, path: path)
        guard saved == vae.config else {
            throw ConfigError.invalid(file: path, field: "vae_config",
                                      message: "the weights are of VAE config \(try Checkpointing.vaeConfigJSON(saved)), the run's is \(try Checkpointing.vaeConfigJSON(vae.config))")
        }
        try ModelWeights.load(vae.namedParameters(), from: f, file: path)
    }

    /// The validated `vae_config` attribute of an open weights file.
    static func config(of f: H5File, path: String) throws -> VAEConfig {
        let text: String
        do { text = try f.stringAttribute("vae_config") } catch {
            throw ConfigError.invalid(file: path, field: "vae_config", message: "no VAE config attribute: is this a file written by hv-coord train-vae --out? (\(error))")
        }
        let cfg: VAEConfig
        do { cfg = try JSONDecoder().decode(VAEConfig.self, from: Data(text.utf8)) } catch {
            throw ConfigError.invalid(file: path, field: "vae_config", message: "not a VAE config: \(error)")
        }
        do { try cfg.validate() } catch let DiTConfig.ValidationError.invalid(field, message) {
            throw ConfigError.invalid(file: path, field: "vae_config.\(field)", message: message)
        }
        return cfg
    }

    public static func save(_ vae: CausalVAE, to path: String) throws {
        let f = try H5File(path: path, mode: .create)
        try ModelWeights.save(vae.namedParameters(), to: f)
        try f.setAttribute("vae_config", .string(try Checkpointing.vaeConfigJSON(vae.config)))
        try f.close()
    }
}
