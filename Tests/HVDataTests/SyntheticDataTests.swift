import Foundation
import HVData
import XCTest

/// The synthetic dataset on disk (real libx264 files) and hv's decoder against FFmpeg's own.
final class SyntheticDataTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("hv-synth-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    func testSameSeedSameManifestOtherSeedOtherManifest() throws {
        let a = path("a"), b = path("b"), c = path("c")
        let entries = try SyntheticDataset.write(to: a, count: 4, size: 32, frames: 9, fps: 8, seed: 0)
        try SyntheticDataset.write(to: b, count: 4, size: 32, frames: 9, fps: 8, seed: 0)
        try SyntheticDataset.write(to: c, count: 4, size: 32, frames: 9, fps: 8, seed: 1)
        let manifest = { (dir: String) in try Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.jsonl")) }
        XCTAssertEqual(try manifest(a), try manifest(b), "same seed must give a byte-identical manifest")
        XCTAssertNotEqual(try manifest(a), try manifest(c), "another seed must give another dataset")

        let read = try Manifest.read(a + "/manifest.jsonl")
        XCTAssertEqual(read.entries, entries)
        XCTAssertEqual(read.entries.map(\.path), ["clip-00000.mp4", "clip-00001.mp4", "clip-00002.mp4", "clip-00003.mp4"])
        for entry in read.entries {
            XCTAssertEqual(entry.frames, 9)
            XCTAssertEqual(entry.width, 32)
            XCTAssertEqual(entry.fps, 8)
            let caption = try XCTUnwrap(entry.caption)
            XCTAssertEqual(caption.short_description, "a \(entry.color!) \(entry.shape!) moving \(entry.direction!)")
            XCTAssertEqual(caption.camera_movement, entry.camera)
            XCTAssertNil(entry.start_frame)
            XCTAssertNil(entry.bucket)
            let reader = try VideoReader(path: read.resolve(entry))
            XCTAssertEqual(reader.codecName, "h264")
            let frames = try reader.readAllFrames()
            XCTAssertEqual(frames.count, 9)
            XCTAssertTrue(frames.allSatisfy { $0.width == 32 && $0.height == 32 })
        }
        // The manifest is one JSON object per line with the caption as a nested object.
        let firstLine = try XCTUnwrap(String(decoding: try manifest(a), as: UTF8.self).split(separator: "\n").first)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(firstLine.utf8)) as? [String: Any])
        XCTAssertEqual(Set(object.keys), ["path", "frames", "width", "height", "fps", "caption", "color", "shape",
                                          "direction", "camera"])
        XCTAssertEqual((object["caption"] as? [String: Any])?.count, 7)
    }

    func testMalformedManifestLineIsNamed() throws {
        let file = path("bad.jsonl")
        try "{\"path\":\"a.mp4\",\"frames\":1,\"width\":2,\"height\":2,\"fps\":1}\n\n{\"path\":\"b.mp4\"}\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Manifest.read(file)) { error in
            XCTAssertTrue("\(error)".contains("line 3"), "\(error)")
            XCTAssertTrue("\(error)".contains("frames"), "\(error)")
        }
        // Values out of range are named too (they overflowed, or vanished in curation, before).
        let good = "{\"path\":\"a.mp4\",\"frames\":1,\"width\":2,\"height\":2,\"fps\":1}\n"
        for (line, field) in [("{\"path\":\"b.mp4\",\"frames\":0,\"width\":2,\"height\":2,\"fps\":1}", "'frames'"),
                              ("{\"path\":\"b.mp4\",\"frames\":3,\"width\":2,\"height\":2,\"fps\":1,\"start_frame\":-3}", "'start_frame'"),
                              ("{\"path\":\"b.mp4\",\"frames\":3,\"width\":2,\"height\":2,\"fps\":1,\"start_frame\":\(Int.max)}", "'start_frame'")] {
            try (good + line + "\n").write(toFile: file, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try Manifest.read(file)) { error in
                XCTAssertTrue("\(error)".contains("line 2") && "\(error)".contains(field), "\(error)")
            }
        }
        // Sizes that would overflow or exhaust memory are refused before any clip is rendered.
        for (size, frames) in [(1 << 32, 17), (65536, 17), (64, 100_000_000)] {
            XCTAssertThrowsError(try SyntheticDataset.write(to: path("huge"), count: 1, size: size, frames: frames)) { error in
                XCTAssertTrue("\(error)".contains("size") || "\(error)".contains("frames"), "\(error)")
            }
        }
    }

    /// The decoded video shows what the caption says: the shape's mean colour is nearest to the
    /// caption's colour, and its centroid moves in the caption's direction.
    func testDecodedClipsMatchTheirCaptions() throws {
        let size = 64
        let entries = try SyntheticDataset.write(to: directory, count: 8, size: size, frames: 17, fps: 8, seed: 3)
        for entry in entries {
            let frames = try VideoReader(path: path(entry.path)).readAllFrames()
            XCTAssertEqual(frames.count, 17)
            let first = shapeRegion(frames[0]), last = shapeRegion(frames[16])
            XCTAssertGreaterThan(first.count, 40, "\(entry.path): shape not found")
            XCTAssertGreaterThan(last.count, 40, "\(entry.path): shape not found")
            let nearest = SyntheticVideo.colors.min { a, b in
                colourDistance(a.rgb, first.mean) < colourDistance(b.rgb, first.mean)
            }!
            XCTAssertEqual(nearest.name, entry.color, "\(entry.path): shape colour \(first.mean)")
            // The shape travels half the frame (32 px); a pan adds at most 8 px, a zoom ~3 px.
            let dx = last.centroid.x - first.centroid.x, dy = last.centroid.y - first.centroid.y
            let (along, across): (Double, Double) = switch entry.direction {
            case "left": (-dx, dy)
            case "right": (dx, dy)
            case "up": (-dy, dx)
            default: (dy, dx)
            }
            XCTAssertGreaterThan(along, 20, "\(entry.path) moving \(entry.direction!): moved (\(dx), \(dy))")
            XCTAssertLessThan(abs(across), 10, "\(entry.path) moving \(entry.direction!): moved (\(dx), \(dy))")
        }
    }

    /// Pixels far from their row's median colour (the background is a vertical gradient, and the
    /// shape covers less than half of any row): count, mean colour in [0, 1] and centroid.
    private func shapeRegion(_ frame: VideoFrame) -> (count: Int, mean: (Float, Float, Float), centroid: (x: Double, y: Double)) {
        var count = 0, sx = 0.0, sy = 0.0
        var sum: (Float, Float, Float) = (0, 0, 0)
        for y in 0..<frame.height {
            let row = (0..<frame.width).map { frame.pixel(x: $0, y: y) }
            let median = (Int(row.map(\.r).sorted()[row.count / 2]), Int(row.map(\.g).sorted()[row.count / 2]),
                          Int(row.map(\.b).sorted()[row.count / 2]))
            for (x, p) in row.enumerated() {
                let d = abs(Int(p.r) - median.0) + abs(Int(p.g) - median.1) + abs(Int(p.b) - median.2)
                guard d > 120 else { continue }
                count += 1
                sx += Double(x)
                sy += Double(y)
                sum.0 += Float(p.r) / 255
                sum.1 += Float(p.g) / 255
                sum.2 += Float(p.b) / 255
            }
        }
        let n = Float(max(count, 1))
        return (count, (sum.0 / n, sum.1 / n, sum.2 / n), (sx / Double(max(count, 1)), sy / Double(max(count, 1))))
    }

    private func colourDistance(_ a: (Float, Float, Float), _ b: (Float, Float, Float)) -> Float {
        (a.0 - b.0) * (a.0 - b.0) + (a.1 - b.1) * (a.1 - b.1) + (a.2 - b.2) * (a.2 - b.2)
    }

    // MARK: decode equals FFmpeg's own

    /// Frames of `path` as the `ffmpeg` CLI decodes them to packed RGB24.
    private func ffmpegFrames(_ path: String, width: Int, height: Int) throws -> [[UInt8]] {
        let ffmpeg = "/usr/bin/ffmpeg"
        guard FileManager.default.isExecutableFile(atPath: ffmpeg) else {
            throw XCTSkip("ffmpeg CLI not installed; scripts/install-deps.sh installs it")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ffmpeg)
        process.arguments = ["-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let bytes = [UInt8](out.fileHandleForReading.readDataToEndOfFile())
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "ffmpeg: \(errors)")
        let frameBytes = width * height * 3
        XCTAssertEqual(bytes.count % frameBytes, 0, "ffmpeg output is not whole \(width)x\(height) RGB24 frames")
        return stride(from: 0, to: bytes.count - bytes.count % frameBytes, by: frameBytes).map {
            Array(bytes[$0..<($0 + frameBytes)])
        }
    }

    /// Largest per-value difference between hv's and ffmpeg's decode of every frame.
    private func maxDifferenceToFFmpeg(_ file: String) throws -> (frames: Int, maxDifference: Int) {
        let reader = try VideoReader(path: file)
        let ours = try reader.readAllFrames()
        let theirs = try ffmpegFrames(file, width: reader.width, height: reader.height)
        XCTAssertEqual(ours.count, theirs.count, "\(file): frame counts differ")
        var worst = 0
        for (a, b) in zip(ours, theirs) {
            XCTAssertEqual(a.rgb.count, b.count)
            for i in 0..<min(a.rgb.count, b.count) { worst = max(worst, abs(Int(a.rgb[i]) - Int(b[i]))) }
        }
        return (ours.count, worst)
    }

    func testDecodeEqualsFFmpegCLI() throws {
        // A textured, colourful, non-square clip (chroma upsampling and odd macroblock rows matter)...
        let width = 80, height = 48, count = 12
        let textured = path("textured.mp4")
        let writer = try VideoWriter(path: textured, width: width, height: height, fps: 10,
                                     options: .init(crf: 23, preset: "veryfast"))
        for t in 0..<count {
            var rgb = [UInt8](repeating: 0, count: width * height * 3)
            for y in 0..<height {
                for x in 0..<width {
                    let o = (y * width + x) * 3
                    rgb[o] = UInt8((x * 3 + t * 7) % 256)
                    rgb[o + 1] = UInt8((y * 5 + (x ^ y) % 32) % 256)
                    rgb[o + 2] = (x / 8 + y / 8 + t) % 2 == 0 ? 220 : 30
                }
            }
            try writer.append(rgb: rgb)
        }
        try writer.finish()
        // ... and a synthetic clip as the dataset writes it.
        try SyntheticDataset.write(to: directory, count: 1, size: 64, frames: 17, fps: 8, seed: 11)

        for (file, frames) in [(textured, count), (path("clip-00000.mp4"), 17)] {
            let result = try maxDifferenceToFFmpeg(file)
            XCTAssertEqual(result.frames, frames)
            // Both run libavcodec's h264 decoder and swscale's yuv420p -> rgb24 with bicubic flags.
            XCTAssertEqual(result.maxDifference, 0, "\((file as NSString).lastPathComponent): hv and ffmpeg decodes differ")
            print("decode vs ffmpeg CLI: \((file as NSString).lastPathComponent): \(result.frames) frames, max |difference| \(result.maxDifference)")
        }
    }
}
