import Foundation
import HVData
import XCTest

/// `hv-data curate` on a small set of real files with known defects: a static clip, an exact and
/// a re-encoded duplicate, two clips joined by a cut, a small clip, a short clip, and files that
/// cannot be decoded.
final class CurationTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("hv-curate-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// Writes float RGB frames as an mp4 and returns its manifest entry.
    private func writeClip(_ name: String, _ frames: [[Float]], size: Int, crf: Int = 18) throws -> ManifestEntry {
        let writer = try VideoWriter(path: path(name), width: size, height: size, fps: 8,
                                     options: .init(crf: crf, preset: "veryfast", threads: 1))
        for frame in frames { try writer.append(rgb: SyntheticDataset.rgb24(frame)) }
        try writer.finish()
        return ManifestEntry(path: name, frames: frames.count, width: size, height: size, fps: 8)
    }

    /// Drifting sums of sinusoids, different in each channel, in [0, 1].
    private func texture(frames: Int, size: Int, phase: Float = 0) -> [[Float]] {
        (0..<frames).map { t in
            var rgb = [Float](repeating: 0, count: size * size * 3)
            for y in 0..<size {
                for x in 0..<size {
                    let u = Float(x + t) + phase, v = Float(y) - phase
                    let o = (y * size + x) * 3
                    rgb[o] = 0.5 + 0.2 * sin(0.21 * u + 0.07 * v) + 0.15 * sin(0.05 * u - 0.23 * v + 1)
                    rgb[o + 1] = 0.5 + 0.2 * sin(0.11 * u + 0.17 * v + 2) + 0.15 * sin(0.27 * u + 0.03 * v)
                    rgb[o + 2] = 0.5 + 0.2 * sin(0.08 * u - 0.19 * v + 4) + 0.15 * sin(0.13 * u + 0.29 * v + 3)
                }
            }
            return rgb
        }
    }

    func testCurationStagesDropSplitAndBucket() throws {
        var entries = try SyntheticDataset.write(to: directory, count: 4, size: 64, frames: 17, fps: 8, seed: 5)
        let source = SyntheticVideo(size: 64, frames: 17, seed: 5)

        // A static clip: the first frame of clip 0, held.
        entries.append(try writeClip("static.mp4", Array(repeating: source.clip(0).frames[0], count: 17), size: 64))
        // An exact copy of clip 0.
        try FileManager.default.copyItem(atPath: path("clip-00000.mp4"), toPath: path("copy.mp4"))
        entries.append(ManifestEntry(path: "copy.mp4", frames: 17, width: 64, height: 64, fps: 8))
        // Two clips of another seed, with different backgrounds, joined: a cut at frame 17.
        let other = SyntheticVideo(size: 64, frames: 17, seed: 99)
        let i = (0..<50).first { other.clip($0).caption.background != other.clip($0 + 1).caption.background }!
        entries.append(try writeClip("cut.mp4", other.clip(i).frames + other.clip(i + 1).frames, size: 64))
        // 40x40, 11 frames -> bucket 32x32x9; 3 frames -> too short.
        entries.append(try writeClip("small.mp4", SyntheticVideo(size: 40, frames: 11, seed: 7).clip(0).frames, size: 40))
        entries.append(try writeClip("short.mp4", SyntheticVideo(size: 64, frames: 3, seed: 7).clip(0).frames, size: 64))
        // Undecodable: noise, a cut-off file (index at the end), a missing file.
        let noise = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        try Data(noise).write(to: URL(fileURLWithPath: path("garbage.mp4")))
        let whole = try Data(contentsOf: URL(fileURLWithPath: path("clip-00001.mp4")))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: path("truncated.mp4")))
        for name in ["garbage.mp4", "truncated.mp4", "missing.mp4"] {
            entries.append(ManifestEntry(path: name, frames: 17, width: 64, height: 64, fps: 8))
        }
        let input = path("manifest.jsonl")
        try Manifest.write(entries, to: input)

        // Output in a subdirectory: paths become relative to it.
        try FileManager.default.createDirectory(atPath: path("curated"), withIntermediateDirectories: true)
        let output = path("curated/manifest.jsonl")
        var logged: [String] = []
        let report = try Curator.curate(input: input, output: output, log: { logged.append($0) })

        // Stage counts: 12 entries; 3 undecodable; the cut clip splits (+1); 1 static; 1 duplicate; 1 too short.
        XCTAssertEqual(report.stages.map(\.name), Curator.stageNames)
        XCTAssertEqual(report.stages.map(\.input), [12, 9, 10, 9, 8])
        XCTAssertEqual(report.stages.map(\.output), [9, 10, 9, 8, 7])

        func reason(_ label: String) -> String { report.dropReason(label) ?? "(kept)" }
        for name in ["garbage.mp4", "truncated.mp4", "missing.mp4"] {
            XCTAssertTrue(reason(name).hasPrefix("unreadable: "), reason(name))
            XCTAssertTrue(reason(name).contains(path(name)), "the reason names the file: \(reason(name))")
        }
        XCTAssertTrue(reason("static.mp4[0..<17]").hasPrefix("static: "), reason("static.mp4[0..<17]"))
        XCTAssertTrue(reason("copy.mp4[0..<17]").hasPrefix("duplicate of clip-00000.mp4[0..<17] (pHash distance 0"),
                      reason("copy.mp4[0..<17]"))
        XCTAssertTrue(reason("short.mp4[0..<3]").hasPrefix("too short: "), reason("short.mp4[0..<3]"))
        XCTAssertEqual(report.drops.count, 6)
        XCTAssertEqual(logged.filter { $0.hasPrefix("dropped ") }.count, 6)

        XCTAssertEqual(report.splits.count, 1)
        XCTAssertEqual(report.splits.first?.label, "cut.mp4")
        XCTAssertEqual(report.splits.first?.shots, [0..<17, 17..<34])

        // The kept entries, read back from the output manifest.
        let curated = try Manifest.read(output)
        XCTAssertEqual(curated.entries.map(\.label), [
            "../clip-00000.mp4[0..<17]", "../clip-00001.mp4[0..<17]", "../clip-00002.mp4[0..<17]",
            "../clip-00003.mp4[0..<17]", "../cut.mp4[0..<17]", "../cut.mp4[17..<34]", "../small.mp4[0..<11]",
        ])
        XCTAssertEqual(curated.entries.map(\.bucket), Array(repeating: "64x64x17", count: 6) + ["32x32x9"])
        for entry in curated.entries {
            XCTAssertTrue(FileManager.default.fileExists(atPath: curated.resolve(entry)), curated.resolve(entry))
        }
        XCTAssertEqual(curated.entries[0].caption, entries[0].caption, "captions and labels are carried over")
        XCTAssertEqual(curated.entries[0].color, entries[0].color)

        // Curating the curated manifest again keeps everything: its frame ranges are honoured.
        let again = try Curator.curate(input: output, output: path("curated/again.jsonl"))
        XCTAssertEqual(again.drops, [])
        XCTAssertEqual(again.kept.map(\.label), curated.entries.map(\.label))
    }

    /// A lossier encode of the same frames is caught at a looser distance; another texture is not.
    /// (Textured clips: the colour planes of flat synthetic clips hash mostly codec noise, so their
    /// re-encodes are not caught at any distance that keeps distinct synthetic clips apart.)
    func testNearDuplicateReencode() throws {
        let entries = [
            try writeClip("textured.mp4", texture(frames: 17, size: 64), size: 64, crf: 16),
            try writeClip("textured-lq.mp4", texture(frames: 17, size: 64), size: 64, crf: 20),
            try writeClip("other.mp4", texture(frames: 17, size: 64, phase: 20), size: 64, crf: 16),
        ]
        try Manifest.write(entries, to: path("m.jsonl"))
        let report = try Curator.curate(Manifest.read(path("m.jsonl")), options: .init(dupDistance: 12))
        let signature = { (label: String) in report.shots.first { $0.label == label }?.signature ?? [] }
        let near = PerceptualHash.distance(signature("textured-lq.mp4[0..<17]"), signature("textured.mp4[0..<17]"))
        let far = PerceptualHash.distance(signature("other.mp4[0..<17]"), signature("textured.mp4[0..<17]"))
        print("pHash signature distance: lossier encode \(near), other texture \(far)")
        XCTAssertEqual(report.kept.map(\.path).sorted(), [path("other.mp4"), path("textured.mp4")].map(absolutePath).sorted())
        XCTAssertTrue(report.dropReason("textured-lq.mp4[0..<17]")?.hasPrefix("duplicate of textured.mp4[0..<17]") ?? false,
                      "distance \(near)")
        XCTAssertGreaterThan(far, 20)
    }

    private func absolutePath(_ p: String) -> String { (p as NSString).standardizingPath }

    func testThresholdsChangeTheOutcome() throws {
        let entries = try SyntheticDataset.write(to: directory, count: 2, size: 32, frames: 9, fps: 8, seed: 2)
        try Manifest.write(entries + [entries[0]], to: path("m.jsonl"))  // clip 0 twice
        let strict = try Curator.curate(Manifest.read(path("m.jsonl")), options: .init(motionThreshold: 1000))
        XCTAssertEqual(strict.kept.count, 0)
        XCTAssertEqual(strict.drops.map(\.stage), ["motion", "motion", "motion"])
        let exactOnly = try Curator.curate(Manifest.read(path("m.jsonl")), options: .init(dupDistance: 0))
        XCTAssertEqual(exactOnly.kept.count, 2, "distance 0 still catches the identical entry")
        XCTAssertThrowsError(try Curator.curate(Manifest.read(path("m.jsonl")), options: .init(cutThreshold: 0)))
    }

    func testBuckets() {
        XCTAssertEqual(Curator.bucket(width: 64, height: 64, frames: 17).map { "\($0.width)x\($0.height)x\($0.frames)" }, "64x64x17")
        XCTAssertEqual(Curator.bucket(width: 70, height: 50, frames: 20).map { "\($0.width)x\($0.height)x\($0.frames)" }, "64x48x17")
        XCTAssertEqual(Curator.bucket(width: 1280, height: 720, frames: 129).map { "\($0.width)x\($0.height)x\($0.frames)" },
                       "1280x720x129")
        XCTAssertEqual(Curator.bucket(width: 32, height: 32, frames: 1).map { "\($0.frames)" }, "1")
        XCTAssertNil(Curator.bucket(width: 8, height: 64, frames: 17))
        // Long or huge clips get buckets that ClipLoader accepts: frames cut, sides cropped.
        for (w, h, t) in [(1280, 720, 1000), (1920, 1080, 20000), (7680, 4320, 129)] {
            let b = Curator.bucket(width: w, height: h, frames: t)!
            XCTAssertNotNil(ClipLoader.Bucket(key: Curator.bucketKey(width: b.width, height: b.height, frames: b.frames)), "\(b)")
            XCTAssertEqual((b.frames - 1) % 4, 0)
        }
        XCTAssertEqual(Curator.bucket(width: 1280, height: 720, frames: 1000).map { "\($0.width)x\($0.height)x\($0.frames)" }, "1280x720x289")
    }

    func testPerceptualHash() {
        // A contrast/brightness change keeps the hash (the DCT is linear, the median threshold
        // scale-free); a mirror image changes the sign of every odd horizontal frequency.
        var state: UInt32 = 12345
        let image: [Float] = (0..<1024).map { _ in
            state = state &* 1_664_525 &+ 1_013_904_223
            return Float(state >> 24)
        }
        let mirrored: [Float] = (0..<1024).map { (i: Int) -> Float in image[i - i % 32 + 31 - i % 32] }
        let brighter: [Float] = image.map { (v: Float) -> Float in v * 0.5 + 60 }
        XCTAssertEqual(PerceptualHash.dct(image), PerceptualHash.dct(brighter))
        XCTAssertGreaterThan(PerceptualHash.distance(PerceptualHash.dct(image), PerceptualHash.dct(mirrored)), 8)
        XCTAssertEqual(PerceptualHash.distance([0b1011, 0], [0b0001, 0b111]), 3)
    }
}
