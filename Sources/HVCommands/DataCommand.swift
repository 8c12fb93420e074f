import ArgumentParser
import Foundation
import HVData
import HVTrain

/// `hv-data`: synthetic datasets and curation of video manifests.
public struct DataCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hv-data",
        abstract: "Make and curate video datasets (mp4 files + a JSON-lines manifest).",
        discussion: """
        Synthetic set:  hv-data synth --out data/synth --count 200
        Curate it:      hv-data curate --in data/synth/manifest.jsonl \\
                          --out data/synth/curated.jsonl
        Cache latents:  hv-data encode --vae vae.h5 \\
                          --manifest data/synth/curated.jsonl --out data/latents
        """,
        subcommands: [SynthCommand.self, CurateCommand.self, EncodeCommand.self])
    public init() {}
}

struct SynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Write a seeded synthetic text-to-video dataset: H.264 mp4 clips and manifest.jsonl.",
        discussion: """
        Each clip is one coloured shape (square, circle, triangle) moving left,
        right, up or down over a gradient background, with a static camera, a
        pan or a zoom. DIR/manifest.jsonl has one JSON object per clip: path
        (relative to DIR), frames, width, height, fps, caption (short and dense
        description, background, style, lighting, atmosphere, camera movement)
        and the labels color, shape, direction, camera. The same arguments give
        the same manifest and frames (mp4 bytes may vary on AVX-512 CPUs).
        """)

    @Option(help: "Output directory (created if missing).") var out: String
    @Option(help: "Number of clips.") var count: Int
    @Option(help: "Frame width and height in pixels (even, >= 16).") var size = 64
    @Option(help: "Frames per clip.") var frames = 17
    @Option(help: "Frames per second written into the mp4 files.") var fps = 8
    @Option(help: "Random seed; clip i depends only on (seed, i).") var seed: UInt64 = 0

    func run() throws {
        try runOrExit {
            let start = Date()
            try SyntheticDataset.write(to: out, count: count, size: size, frames: frames, fps: fps, seed: seed) { done, total in
                if done % 50 == 0 || done == total { stderrLine("hv-data: \(done)/\(total) clips") }
            }
            stderrLine(String(format: "hv-data: wrote %d clips (%dx%d, %d frames, %d fps, seed %llu) and %@ in %.1fs", count,
                              size, size, frames, fps, seed, SyntheticDataset.manifestName, Date().timeIntervalSince(start)))
            print((out as NSString).appendingPathComponent(SyntheticDataset.manifestName))
        }
    }
}

struct CurateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "curate",
        abstract: "Filter a manifest: split shots, drop static clips and near-duplicates, bucket the rest.",
        discussion: """
        Stages, each on what the previous one kept (HunyuanVideo's hierarchical
        filtering, in small):
          decode      unreadable or truncated files are skipped, with FFmpeg's
                      reason
          shot split  a cut is where the colour-histogram distance between
                      consecutive frames exceeds --cut-threshold; each shot
                      becomes an entry: a frame range of the source file
                      (start_frame, frames), not re-encoded
          motion      shots whose mean |frame difference| (RGB, 0-255) is
                      below --motion-threshold are dropped as static
          dedup       a shot whose nine 64-bit DCT perceptual hashes (R, G, B
                      of its first, middle, last frame) are each within
                      --dup-distance bits of an earlier kept shot's is
                      dropped as its duplicate
          bucket      sides rounded down to a multiple of --size-multiple,
                      frames down to 4k+1: bucket "WxHxT" (centre-crop to
                      WxH, take T frames); below --min-frames is dropped
        Prints the counts per stage and every dropped entry with its reason;
        writes the kept entries (with start_frame and bucket, paths relative
        to the output manifest) to --out.
        """)

    @Option(name: .customLong("in"), help: "Input manifest (JSON lines).") var input: String
    @Option(help: "Output manifest.") var out: String
    @Option(help: "Cut when the histogram distance between consecutive frames exceeds this (0-1).")
    var cutThreshold = CurationOptions().cutThreshold
    @Option(help: "Drop shots whose mean absolute frame difference (0-255) is below this.")
    var motionThreshold = CurationOptions().motionThreshold
    @Option(help: "Near-duplicates: every perceptual-hash Hamming distance at most this (0-64).")
    var dupDistance = CurationOptions().dupDistance
    @Option(help: "Drop shots with fewer frames than this (after rounding down to 4k+1).")
    var minFrames = CurationOptions().minFrames
    @Option(help: "Round bucket sides down to a multiple of this.")
    var sizeMultiple = CurationOptions().sizeMultiple
    @Flag(help: "Also print every shot's motion score, largest in-shot histogram distance and hashes.") var verbose = false

    func run() throws {
        try runOrExit {
            let options = CurationOptions(cutThreshold: cutThreshold, motionThreshold: motionThreshold,
                                          dupDistance: dupDistance, minFrames: minFrames, sizeMultiple: sizeMultiple)
            let report = try Curator.curate(input: input, output: out, options: options)
            for split in report.splits {
                print("split    \(split.label) -> \(split.shots.map { "[\($0.lowerBound)..<\($0.upperBound)]" }.joined(separator: " "))")
            }
            for drop in report.drops { print("dropped  \(drop.label) [\(drop.stage)]: \(drop.reason)") }
            if verbose {
                for shot in report.shots {
                    print(String(format: "shot     %@  motion %.3f  max-cut %.3f  phash ", shot.label, shot.motion, shot.maxCutScore)
                          + shot.signature.map { String(format: "%016llx", $0) }.joined(separator: ","))
                }
            }
            print("stage        in   out")
            for s in report.stages {
                print("\(s.name.padding(toLength: 10, withPad: " ", startingAt: 0)) \(String(format: "%5d %5d", s.input, s.output))  \(s.note)")
            }
            var buckets: [String: Int] = [:]
            for e in report.kept { buckets[e.bucket ?? "?", default: 0] += 1 }
            print("buckets    " + buckets.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))
            stderrLine("hv-data: kept \(report.kept.count) of \(report.stages.first?.input ?? 0) entries -> \(out)")
        }
    }
}

struct EncodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encode",
        abstract: "Cache VAE latents and tokenised captions of a manifest's clips in HDF5 shards for DiT training.",
        discussion: """
        Each entry is decoded (frames start_frame ..< start_frame + T of its
        bucket "WxHxT", as hv-data curate assigns; entries without a bucket get
        curation's rule), centre-cropped to W x H, scaled to [-1, 1] and
        encoded; the posterior mean times the VAE's scaling factor is stored
        with the caption's token ids. --image-samples also stores each clip's
        first frame as a 1-frame sample (joint image + video training).
        DIR/shard-NNNNN.h5 hold the samples, DIR/index.json (written last)
        lists them. Unreadable clips are skipped and listed in the index.
        Train on it with a run config's
          data: {kind: latent-cache, path: DIR}
        The tokenizer settings must equal the run's text_encoder fields
        (--config RUN.yaml takes them from the run).
        """)

    @Option(help: "VAE weights written by hv-coord train-vae --out (HDF5 with a vae_config attribute).") var vae: String
    @Option(help: "Input manifest (JSON lines), e.g. from hv-data curate.") var manifest: String
    @Option(help: "Output directory (created if missing).") var out: String
    @Option(help: "Take text_encoder.vocab_size and max_tokens from this run config.") var config: String?
    @Option(help: "Tokenizer vocabulary size (default 4096, or the run's).") var vocabSize: Int?
    @Option(help: "Tokens per caption (default 16, or the run's).") var maxTokens: Int?
    @Option(help: "Samples per HDF5 shard.") var shardSize = 256
    @Flag(help: "Also cache each clip's first frame as an image (1-frame) sample.") var imageSamples = false
    @Option(help: "Encode clips longer than this many latent frames (+1) in temporal tiles (official 16; 0 = never).") var temporalTile = 0
    @Option(help: "Temporal tile overlap in latent frames.") var temporalOverlap = 4
    @Option(help: "Encode frames larger than this many latent pixels in spatial tiles (official 32 = 256 px; 0 = never).") var tile = 0
    @Option(help: "Spatial tile overlap in latent pixels.") var overlap = 8
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        try runOrExit {
            threads.apply()
            var o = LatentEncoding.Options()
            if let config {
                let run = try RunConfig.load(path: config)
                o.vocabSize = run.text_encoder.vocab_size
                o.maxTokens = run.text_encoder.max_tokens
            }
            if let vocabSize { o.vocabSize = vocabSize }
            if let maxTokens { o.maxTokens = maxTokens }
            guard o.vocabSize >= 2, o.maxTokens >= 1, shardSize >= 1 else {
                throw ValidationError("--vocab-size must be >= 2, --max-tokens and --shard-size >= 1")
            }
            o.shardSize = shardSize
            o.imageSamples = imageSamples
            guard temporalTile >= 0, temporalOverlap >= 0, temporalTile == 0 || temporalOverlap < temporalTile else {
                throw ValidationError("--temporal-tile must be >= 0 and --temporal-overlap in 0..<temporal-tile")
            }
            o.temporalTile = temporalTile
            o.temporalOverlap = temporalOverlap
            guard tile >= 0, tile == 0 || (overlap >= 1 && overlap < tile) else {
                throw ValidationError("--tile must be >= 0 and --overlap in 1..<tile")
            }
            o.spatialTile = tile
            o.spatialOverlap = overlap
            let start = Date()
            let index = try LatentEncoding.encode(manifest: manifest, vae: vae, out: out, options: o) { stderrLine($0) }
            var buckets: [String: Int] = [:]
            for s in index.samples { buckets[s.shape.map(String.init).joined(separator: "x"), default: 0] += 1 }
            print("latent shapes (CxTxHxW): " + buckets.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))
            stderrLine(String(format: "hv-data: cached %d samples in %d shard(s) under %@ (%d skipped) in %.1fs", index.samples.count,
                              index.shards.count, out, index.skipped.count, Date().timeIntervalSince(start)))
        }
    }
}
