import Foundation
import HVCheckpoint
import HVData
import HVModel
import HVNN
import HVTensor
import HVTrain
import XCTest
import _HVTestSupport

/// `hv-data encode` and `data: kind: latent-cache`: a tiny synthetic set (3 clips, 32x32, 5
/// frames) through an untrained tiny VAE, cached with image samples; the DiT trains from it.
final class LatentCacheTests: XCTestCase {
    var root = ""

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "hv-latent-cache-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    static func tinyVAE() throws -> VAEConfig { try loadVAEConfig(path: repoRoot.appendingPathComponent("configs/vae/tiny.yaml").path) }

    /// Writes the clips, the VAE weights and the cache (shards of 2 samples). Returns the run config
    /// training on it (tiny DiT, tokenizer of configs/runs/tiny.yaml).
    func makeCache() throws -> (run: RunConfig, manifest: String, vae: CausalVAE, cacheDir: String) {
        try SyntheticDataset.write(to: root + "/clips", count: 3, size: 32, frames: 5, seed: 3)
        let vae = CausalVAE(config: try Self.tinyVAE(), seed: 1)
        try VAEWeights.save(vae, to: root + "/vae.h5")
        var run = try RunConfig.load(path: repoRoot.appendingPathComponent("configs/runs/tiny.yaml").path)
        var o = LatentEncoding.Options()
        o.shardSize = 2
        o.imageSamples = true
        o.vocabSize = run.text_encoder.vocab_size
        o.maxTokens = run.text_encoder.max_tokens
        let manifest = root + "/clips/" + SyntheticDataset.manifestName
        try LatentEncoding.encode(manifest: manifest, vae: root + "/vae.h5", out: root + "/cache", options: o)
        run.data.kind = "latent-cache"
        run.data.path = root + "/cache"
        run.data.image_ratio = 0
        run.train.batch_size = 2
        run.train.steps = 6
        try run.validate()
        return (run, manifest, vae, root + "/cache")
    }

    /// Cached latents equal a direct encode (frames decoded here, VAE mean x scaling factor),
    /// captions are tokenised as the trainer would, and the shapes/shards are as asked.
    func testCacheEqualsDirectEncode() throws {
        let (run, manifestPath, vae, dir) = try makeCache()
        let cache = try LatentCache(directory: dir)
        XCTAssertEqual(cache.count, 6)  // 3 clips + 3 first frames
        XCTAssertEqual(cache.index.shards.map(\.count), [2, 2, 2])
        XCTAssertEqual(cache.buckets.map(\.shape), [[16, 1, 4, 4], [16, 2, 4, 4]])
        let manifest = try Manifest.read(manifestPath)
        let tokenizer = WordTokenizer(vocabularySize: run.text_encoder.vocab_size, maxTokens: run.text_encoder.max_tokens)
        for (k, entry) in manifest.entries.enumerated() {
            let frames = try VideoReader(path: manifest.resolve(entry)).readAllFrames()
            XCTAssertEqual(frames.count, 5)
            let x = Tensor(zeros: [1, 3, 5, 32, 32])
            for t in 0..<5 { for y in 0..<32 { for xx in 0..<32 { for c in 0..<3 {
                x.pointer[((c * 5 + t) * 32 + y) * 32 + xx] = Float(frames[t].rgb[(y * 32 + xx) * 3 + c]) / 255 * 2 - 1
            }}}}
            let direct = GradMode.withoutGrad { vae.encode(x).mean * Float(vae.config.scaling_factor) }
            let (video, tokens, caption) = try cache.sample(2 * k)
            XCTAssertEqual(video.shape, [16, 2, 4, 4])
            XCTAssertLessThan(maxAbsDiff(video, direct.squeeze(0)), 1e-5, entry.path)
            XCTAssertEqual(caption, entry.caption?.short_description)
            XCTAssertEqual(tokens, tokenizer.encode(caption).ids)
            let image = try cache.sample(2 * k + 1).latent
            let first = GradMode.withoutGrad { vae.encode(x.slice(axis: 2, start: 0, length: 1).contiguous()).mean * Float(vae.config.scaling_factor) }
            XCTAssertLessThan(maxAbsDiff(image, first.squeeze(0)), 1e-5)
        }
    }

    /// A few DiT steps from the cache: finite losses, batches of one shape each, both image and
    /// video batches within an epoch (joint training); resuming the data position is exact.
    func testTrainsFromCacheMixingImagesAndVideos() throws {
        let (run, _, _, _) = try makeCache()
        let trainer = try Trainer(config: run)
        XCTAssertEqual(trainer.order.count, 4)  // 2 buckets x ceil(3 / 2)
        var tokens: Set<Int> = []
        for _ in 0..<6 {
            let s = try trainer.trainStep()
            XCTAssert(s.loss.isFinite)
            tokens.insert(s.videoTokens / 2)
        }
        XCTAssertEqual(tokens, [4, 8])  // 1 x 2 x 2 patches (images) and 2 x 2 x 2 (videos) per sample
        // The plan is a pure function of (seed, epoch): a fresh trainer restored to step 3's data
        // position sees the same batches.
        let a = try Trainer(config: run), b = try Trainer(config: run)
        for _ in 0..<3 { _ = try a.trainStep() }
        try b.restore(step: a.step, samplesSeen: a.samplesSeen, order: a.order)
        XCTAssertEqual(a.order, b.order)
    }

    /// A missing or corrupt shard, or a missing index, fails with an error naming the file.
    /// `train-vae --init`: weights saved from one VAE load into another of the same config
    /// (every parameter equal afterwards); a file of another config is refused, naming the file.
    func testVAEWeightsLoadIntoSameConfigOnly() throws {
        let cfg = try Self.tinyVAE()
        let src = CausalVAE(config: cfg, seed: 1), dst = CausalVAE(config: cfg, seed: 2)
        try VAEWeights.save(src, to: root + "/a.h5")
        XCTAssertNotEqual(src.namedParameters()[0].1.scalars, dst.namedParameters()[0].1.scalars)
        try VAEWeights.load(into: dst, path: root + "/a.h5")
        for ((name, a), (_, b)) in zip(src.namedParameters(), dst.namedParameters()) { XCTAssertEqual(a.scalars, b.scalars, name) }
        var other = cfg
        other.block_out_channels = cfg.block_out_channels.map { $0 * 2 }
        XCTAssertThrowsError(try VAEWeights.load(into: CausalVAE(config: other, seed: 0), path: root + "/a.h5")) { error in
            XCTAssertTrue("\(error)".contains("a.h5"), "\(error)")
        }
    }

    func testBadShardsNameTheFile() throws {
        let (run, _, _, dir) = try makeCache()
        let shard = dir + "/shard-00001.h5"
        let saved = try Data(contentsOf: URL(fileURLWithPath: shard))
        try saved.prefix(saved.count / 3).write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try Trainer(config: run)) { e in
            XCTAssert("\(e)".contains("shard-00001.h5") && "\(e)".contains("corrupt"), "\(e)")
        }
        try FileManager.default.removeItem(atPath: shard)
        XCTAssertThrowsError(try LatentCache(directory: dir)) { e in
            XCTAssert("\(e)".contains("shard-00001.h5") && "\(e)".contains("missing"), "\(e)")
        }
        // A flipped byte inside a sample's latent fails its Fletcher-32 checksum on read.
        try saved.write(to: URL(fileURLWithPath: shard))
        let (good, _, _) = try LatentCache(directory: dir).sample(2)
        var bytes = saved
        let needle = good.scalars.prefix(4).withUnsafeBytes { Data($0) }
        let at = try XCTUnwrap(bytes.range(of: needle)).lowerBound
        bytes[at] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try LatentCache(directory: dir).sample(2)) { e in
            XCTAssert("\(e)".contains("shard-00001.h5"), "\(e)")
        }
        try saved.write(to: URL(fileURLWithPath: shard))
        // index.json values that do not fit the VAE or the shard: errors naming the file.
        let indexPath = dir + "/index.json"
        let savedIndex = try Data(contentsOf: URL(fileURLWithPath: indexPath))
        let index = try JSONDecoder().decode(LatentCacheIndex.self, from: savedIndex)
        func withIndex(_ edit: (inout LatentCacheIndex) -> Void, _ body: () throws -> Void) throws {
            var i = index
            edit(&i)
            try JSONEncoder().encode(i).write(to: URL(fileURLWithPath: indexPath))
            try body()
            try savedIndex.write(to: URL(fileURLWithPath: indexPath))
        }
        for shape in [[8, 2, 4, 4], [index.samples[2].shape[0], 0, 4, 4], [index.samples[2].shape[0], -3, 4, 4], [1 << 40, 1 << 40, 2, 2]] {
            try withIndex({ $0.samples[2].shape = shape }) {
                XCTAssertThrowsError(try LatentCache(directory: dir)) { e in
                    XCTAssert("\(e)".contains("index.json") && "\(e)".contains("\(shape)"), "\(e)")
                }
            }
        }
        // Same number of values, other shape: the stored dataset's shape is compared.
        let s2 = index.samples[2].shape
        try withIndex({ $0.samples[2].shape = [s2[0], s2[1] * s2[2], 1, s2[3]] }) {
            XCTAssertThrowsError(try LatentCache(directory: dir).sample(2)) { e in
                XCTAssert("\(e)".contains("shard-00001.h5") && "\(e)".contains("latent shape"), "\(e)")
            }
        }
        // Token ids beyond the vocabulary the index declares.
        try withIndex({ $0.vocab_size = 1 }) {
            XCTAssertThrowsError(try LatentCache(directory: dir).sample(2)) { e in
                XCTAssert("\(e)".contains("shard-00001.h5") && "\(e)".contains("vocab_size"), "\(e)")
            }
        }
        try FileManager.default.removeItem(atPath: dir + "/index.json")
        XCTAssertThrowsError(try Trainer(config: run)) { e in XCTAssert("\(e)".contains("index.json"), "\(e)") }
        var bad = run
        bad.data.path = ""
        XCTAssertThrowsError(try bad.validate(file: "run.yaml")) { e in XCTAssert("\(e)".contains("data.path"), "\(e)") }
    }
}
