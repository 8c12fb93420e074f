import Foundation
import HVData
import XCTest

/// Smoke tests of the FFmpeg bridge: encode with libx264 through VideoWriter, decode with
/// VideoReader, and check what comes back against what went in.
final class VideoTests: XCTestCase {
    private var directory: URL!
    static let width = 64, height = 48, frameCount = 12
    /// Distinct, not fully saturated colours (H.264 in yuv420p cannot keep saturated edges exact).
    static let palette: [(r: UInt8, g: UInt8, b: UInt8)] = [
        (200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200),
        (128, 128, 128), (230, 230, 230), (20, 20, 20), (180, 100, 30), (30, 100, 180), (100, 180, 30),
    ]
    /// 12/255 of the range, for means over large flat regions after lossy coding.
    static let tolerance = 12.0

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("hv-video-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func writeSolidColourVideo(name: String, fastStart: Bool = false) throws -> String {
        let path = directory.appendingPathComponent(name).path
        let writer = try VideoWriter(path: path, width: Self.width, height: Self.height, fps: 12,
                                     options: .init(crf: 18, preset: "veryfast", fastStart: fastStart))
        for color in Self.palette {
            try writer.append(VideoFrame(width: Self.width, height: Self.height, color: color))
        }
        XCTAssertEqual(writer.frameCount, Self.frameCount)
        try writer.finish()
        try writer.finish()  // idempotent
        XCTAssertThrowsError(try writer.append(VideoFrame(width: Self.width, height: Self.height, color: (0, 0, 0))))
        return path
    }

    private func assertColour(_ frame: VideoFrame, _ expected: (r: UInt8, g: UInt8, b: UInt8),
                              file: StaticString = #filePath, line: UInt = #line) {
        let mean = frame.meanColor()
        let message = "frame \(frame.index): mean \(mean) vs written \(expected)"
        XCTAssertEqual(mean.r, Double(expected.r), accuracy: Self.tolerance, message, file: file, line: line)
        XCTAssertEqual(mean.g, Double(expected.g), accuracy: Self.tolerance, message, file: file, line: line)
        XCTAssertEqual(mean.b, Double(expected.b), accuracy: Self.tolerance, message, file: file, line: line)
    }

    /// The deterministic configuration gives the same bytes for the same frames (textured
    /// frames, so motion search and the SIMD paths have work to do), and still decodes.
    func testDeterministicOptionsGiveIdenticalBytes() throws {
        var rng = SystemRandomNumberGenerator()
        let frames = (0..<6).map { t in
            VideoFrame(width: Self.width, height: Self.height, rgb: (0..<(Self.width * Self.height * 3)).map { i in
                UInt8(truncatingIfNeeded: (i / 3 % Self.width) * 3 + t * 7 + (i % 3) * 40 + Int.random(in: 0..<24, using: &rng))
            })
        }
        func encode(_ name: String) throws -> Data {
            let path = directory.appendingPathComponent(name).path
            let writer = try VideoWriter(path: path, width: Self.width, height: Self.height, fps: 8, options: .deterministic(crf: 12))
            for f in frames { try writer.append(f) }
            try writer.finish()
            return try Data(contentsOf: URL(fileURLWithPath: path))
        }
        let a = try encode("a.mp4"), b = try encode("b.mp4")
        XCTAssertEqual(a, b, "same frames, same bytes")
        XCTAssertNil(a.range(of: Data("Lavf".utf8)), "bit-exact muxing writes no library version")
        let reader = try VideoReader(path: directory.appendingPathComponent("a.mp4").path)
        XCTAssertEqual(try reader.readAllFrames().count, frames.count)
    }

    /// x264-params reach libx264: x264 writes its effective settings into the stream (SEI).
    func testX264ParamsArePassedThrough() throws {
        let path = directory.appendingPathComponent("p.mp4").path
        let writer = try VideoWriter(path: path, width: 16, height: 16, fps: 8, options: .init(x264Params: "keyint=7:threads=1"))
        for t in 0..<3 { try writer.append(VideoFrame(width: 16, height: 16, color: (UInt8(40 * t), 90, 200))) }
        try writer.finish()
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertNotNil(bytes.range(of: Data("keyint=7 ".utf8)), "x264's settings string should show keyint=7")
    }

    func testWriteThenDecodeSolidColourFrames() throws {
        let path = try writeSolidColourVideo(name: "solid.mp4")
        let reader = try VideoReader(path: path)
        XCTAssertEqual(reader.codecName, "h264")
        XCTAssertEqual(reader.width, Self.width)
        XCTAssertEqual(reader.height, Self.height)
        XCTAssertEqual(reader.fps, 12, accuracy: 1e-6)
        XCTAssertEqual(reader.frameCountEstimate, Self.frameCount)
        XCTAssertEqual(reader.duration, 1.0, accuracy: 0.1)

        var frames: [VideoFrame] = []
        while let frame = try reader.nextFrame() { frames.append(frame) }
        XCTAssertEqual(frames.count, Self.frameCount)
        XCTAssertNil(try reader.nextFrame())
        for (i, frame) in frames.enumerated() {
            XCTAssertEqual(frame.index, i)
            XCTAssertEqual(frame.timestamp, Double(i) / 12, accuracy: 1e-6)
            XCTAssertEqual(frame.rgb.count, Self.width * Self.height * 3)
            assertColour(frame, Self.palette[i])
        }
        reader.close()
        XCTAssertThrowsError(try reader.nextFrame()) { error in
            guard case VideoError.closed = error else { return XCTFail("expected .closed, got \(error)") }
        }
    }

    func testMovingSquareKeepsItsPosition() throws {
        let path = directory.appendingPathComponent("square.mp4").path
        let side = 16
        let writer = try VideoWriter(path: path, width: Self.width, height: Self.height, fps: 24,
                                     options: .init(crf: 20, preset: "ultrafast"))
        for i in 0..<Self.frameCount {
            var rgb = [UInt8](repeating: 16, count: Self.width * Self.height * 3)
            let x0 = 4 * i, y0 = 16
            for y in y0..<(y0 + side) {
                for x in x0..<(x0 + side) { for c in 0..<3 { rgb[(y * Self.width + x) * 3 + c] = 235 } }
            }
            try writer.append(rgb: rgb)
        }
        try writer.finish()

        let frames = try VideoReader(path: path).readAllFrames()
        XCTAssertEqual(frames.count, Self.frameCount)
        for (i, frame) in frames.enumerated() {
            // Inset by 2 px to stay clear of the blurred edges.
            let inside = frame.meanColor(x: (4 * i + 2)..<(4 * i + side - 2), y: 18..<(16 + side - 2))
            let above = frame.meanColor(x: 0..<Self.width, y: 0..<12)
            XCTAssertEqual(inside.g, 235, accuracy: Self.tolerance, "frame \(i) square")
            XCTAssertEqual(above.g, 16, accuracy: Self.tolerance, "frame \(i) background")
        }
    }

    func testSeekAndStride() throws {
        let path = try writeSolidColourVideo(name: "seek.mp4")
        let reader = try VideoReader(path: path)
        try reader.seek(toFrame: 7)
        let seventh = try XCTUnwrap(reader.nextFrame())
        XCTAssertEqual(seventh.index, 7)
        assertColour(seventh, Self.palette[7])
        XCTAssertEqual(try reader.nextFrame()?.index, 8)

        try reader.seek(toSeconds: 0)
        let strided = try reader.readFrames(count: 4, stride: 3)
        XCTAssertEqual(strided.map(\.index), [0, 3, 6, 9])
        for frame in strided { assertColour(frame, Self.palette[frame.index]) }

        try reader.seek(toFrame: 10)
        XCTAssertEqual(try reader.readFrames(count: 5).map(\.index), [10, 11])  // stops at the end

        let small = try VideoReader(path: path, outputWidth: 32, outputHeight: 24)
        let first = try XCTUnwrap(small.nextFrame())
        XCTAssertEqual(first.width, 32)
        XCTAssertEqual(first.rgb.count, 32 * 24 * 3)
        assertColour(first, Self.palette[0])
    }

    func testTruncatedAndGarbageFilesThrowErrorsNamingTheFile() throws {
        // Index at the end (the default): a cut file has no index. Index first (faststart): the
        // cut lands in the index or in the frame data, depending on where.
        for (fastStart, percents) in [(false, [30]), (true, [30, 40, 50, 70, 90])] {
            let source = try writeSolidColourVideo(name: "whole-\(fastStart).mp4", fastStart: fastStart)
            let bytes = try Data(contentsOf: URL(fileURLWithPath: source))
            for percent in percents {
                let truncated = directory.appendingPathComponent("truncated-\(fastStart)-\(percent).mp4").path
                try bytes.prefix(bytes.count * percent / 100).write(to: URL(fileURLWithPath: truncated))
                XCTAssertThrowsError(try VideoReader(path: truncated).readAllFrames(),
                                     "fastStart \(fastStart), \(percent)%") { error in
                    XCTAssertTrue("\(error)".contains(truncated), "error should name the file: \(error)")
                    XCTAssertTrue(error is VideoError, "\(error)")
                }
            }
            let bytes30 = bytes.prefix(bytes.count * 3 / 10)
            let truncated = directory.appendingPathComponent("cut-\(fastStart).mp4").path
            try bytes30.write(to: URL(fileURLWithPath: truncated))
            if !fastStart {
                XCTAssertThrowsError(try VideoReader(path: truncated)) { error in
                    guard case VideoError.ffmpeg(let code, let message, _, _, _) = error else { return XCTFail("got \(error)") }
                    XCTAssertLessThan(code, 0)
                    XCTAssertFalse(message.isEmpty)
                }
            }
        }

        let garbage = directory.appendingPathComponent("garbage.mp4").path
        let noise = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }
        try Data(noise).write(to: URL(fileURLWithPath: garbage))
        XCTAssertThrowsError(try VideoReader(path: garbage)) { error in
            XCTAssertTrue("\(error)".contains(garbage), "error should name the file: \(error)")
        }
        let missing = directory.appendingPathComponent("missing.mp4").path
        XCTAssertThrowsError(try VideoReader(path: missing)) { error in
            XCTAssertTrue("\(error)".contains(missing), "\(error)")
        }
        XCTAssertThrowsError(try VideoWriter(path: directory.appendingPathComponent("odd.mp4").path,
                                             width: 63, height: 48, fps: 12)) { error in
            guard case VideoError.invalidArgument = error else { return XCTFail("got \(error)") }
        }
        XCTAssertThrowsError(try VideoWriter(path: directory.appendingPathComponent("x.mp4").path,
                                             width: 64, height: 48, fps: 12, options: .init(codec: "no-such-codec")))
    }

    func testPNGWriteIsLosslessAndHasSignature() throws {
        var rgb = [UInt8](repeating: 0, count: 20 * 10 * 3)
        for i in rgb.indices { rgb[i] = UInt8(truncatingIfNeeded: i &* 37) }
        let frame = VideoFrame(width: 20, height: 10, rgb: rgb)
        let path = directory.appendingPathComponent("frame.png").path
        try frame.writePNG(to: path)
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual(Array(data.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])

        // PNG is lossless: decoding it back through VideoReader gives the same bytes.
        let decoded = try XCTUnwrap(VideoReader(path: path).nextFrame())
        XCTAssertEqual(decoded.width, 20)
        XCTAssertEqual(decoded.height, 10)
        XCTAssertEqual(decoded.rgb, rgb)
    }
}
