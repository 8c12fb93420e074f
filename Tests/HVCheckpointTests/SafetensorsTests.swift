import Foundation
import HVCheckpoint
import XCTest

/// The safetensors writer follows the format byte for byte; the reader rejects malformed files.
final class SafetensorsTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("hv-st-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    let tensors = [
        NamedTensor(name: "b.weight", shape: [2, 3], values: [1, 2, 3, 4, 5, -6.5]),
        NamedTensor(name: "a.bias", shape: [3], values: [0.25, -0, .greatestFiniteMagnitude]),
        NamedTensor(name: "scalar", shape: [], values: [7]),
        NamedTensor(name: "empty", shape: [0, 4], values: []),
    ]

    func testLayoutFollowsTheFormat() throws {
        let path = directory.appendingPathComponent("m.safetensors").path
        try Safetensors.write(tensors, metadata: ["format": "pt", "note": "x"], to: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = Int(bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        XCTAssertEqual((8 + n) % 8, 0, "data 8-byte aligned")
        let header = bytes.subdata(in: 8..<(8 + n))
        XCTAssertEqual(header.first, UInt8(ascii: "{"))
        let trimmed = header.reversed().drop { $0 == 0x20 }
        XCTAssertEqual(trimmed.first, UInt8(ascii: "}"), "the header is padded with spaces only")
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: header) as? [String: Any])
        XCTAssertEqual(json["__metadata__"] as? [String: String], ["format": "pt", "note": "x"])
        var offset = 0
        for t in tensors {   // written in the given order, contiguous
            let e = try XCTUnwrap(json[t.name] as? [String: Any], t.name)
            XCTAssertEqual(e["dtype"] as? String, "F32")
            XCTAssertEqual(e["shape"] as? [Int], t.shape)
            XCTAssertEqual(e["data_offsets"] as? [Int], [offset, offset + 4 * t.values.count])
            let raw = bytes.subdata(in: (8 + n + offset)..<(8 + n + offset + 4 * t.values.count))
            XCTAssertEqual(raw.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)).map { UInt32(littleEndian: $0) } }, t.values.map(\.bitPattern))
            offset += 4 * t.values.count
        }
        XCTAssertEqual(bytes.count, 8 + n + offset)
        let (back, meta) = try Safetensors.read(path)
        XCTAssertEqual(meta["note"], "x")
        XCTAssertEqual(Set(back.map(\.name)), Set(tensors.map(\.name)))
        for t in tensors { XCTAssertEqual(back.first { $0.name == t.name }, t) }
    }

    func testBadInputAndBadFilesGiveClearErrors() throws {
        let path = directory.appendingPathComponent("bad.safetensors").path
        XCTAssertThrowsError(try Safetensors.write([tensors[0], tensors[0]], to: path)) { XCTAssert("\($0)".contains("appears twice"), "\($0)") }
        XCTAssertThrowsError(try Safetensors.write([NamedTensor(name: "x", shape: [2, 2], values: [1])], to: path)) { XCTAssert("\($0)".contains("shape [2, 2]"), "\($0)") }
        XCTAssertThrowsError(try Safetensors.write(tensors, to: directory.appendingPathComponent("no/such/dir/m.safetensors").path)) {
            XCTAssert("\($0)".contains("no/such/dir"), "\($0)")
        }
        try Safetensors.write(tensors, to: path)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 4).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Safetensors.read(path)) { XCTAssert("\($0)".contains("not a valid safetensors file"), "\($0)") }
        bytes[0] = 0xFF; bytes[5] = 0x7F
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Safetensors.read(path)) { XCTAssert("\($0)".contains("header length"), "\($0)") }
    }
}
