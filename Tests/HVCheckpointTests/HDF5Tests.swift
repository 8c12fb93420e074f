import Foundation
import HVCheckpoint
import XCTest

/// Smoke tests of the HDF5 bridge against the real libhdf5.
final class HDF5Tests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("hv-hdf5-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func testRoundTripDatasetsAttributesAndGroups() throws {
        let path = directory.appendingPathComponent("roundtrip.h5").path
        let floats: [Float] = (0..<(2 * 3 * 4)).map { Float($0) * 0.25 - 1.5 }
        let doubles: [Double] = [Double.pi, -0.0, 1e-300, .greatestFiniteMagnitude, 42]
        let int64s: [Int64] = [Int64.min, -1, 0, 1, Int64.max, 123_456_789_012]
        let bytes: [UInt8] = (0..<256).map { UInt8($0) }
        let halves: [UInt16] = [0x3F80, 0xBF80, 0x7F80, 0]

        do {
            let file = try H5File(path: path, mode: .create)
            try file.setAttribute("format", "hv-checkpoint")
            try file.setAttribute("version", 3)
            try file.setAttribute("step", .int64(1_000_000_007))
            try file.setAttribute("lr", 3e-4)
            try file.setAttribute("shape", .int64Array([2, 3, 4]))
            try file.setAttribute("betas", .doubleArray([0.9, 0.999]))
            try file.setAttribute("empty", .int64Array([]))
            try file.setAttribute("note", .string("ünïcödé ✓ — variable length"))
            try file.setFixedLengthStringAttribute("fixed", "S-dtype")

            let blocks = try file.createGroup("model/double_blocks/0")
            try blocks.setAttribute("kind", "MMDoubleStreamBlock")
            let weight = try blocks.write("img_mod/weight", floats, shape: [2, 3, 4],
                                          options: H5DatasetOptions(fletcher32: true))
            try weight.setAttribute("dtype", "float32")
            try file.write("optimizer/doubles", doubles, shape: [5])
            try file.write("/optimizer/step_counts", int64s, shape: [2, 3])
            try file.write("data/bytes", bytes, shape: [16, 16], options: H5DatasetOptions(chunks: [4, 16], deflateLevel: 4))
            try file.write("data/bf16_bits", halves, shape: [4])
            try file.write("data/scalar", [Double(7.5)], shape: [])
            try file.write("data/zero_sized", [Float](), shape: [0, 3])
            try file.flush()
            try file.close()
            XCTAssertThrowsError(try file.children()) { error in
                guard case HDF5Error.closed = error else { return XCTFail("expected .closed, got \(error)") }
            }
        }

        XCTAssertTrue(H5File.isHDF5(path: path))
        let file = try H5File(path: path, mode: .readOnly)
        defer { try? file.close() }
        XCTAssertEqual(try file.children(), ["data", "model", "optimizer"])
        XCTAssertEqual(try file.group("model/double_blocks").children(), ["0"])
        XCTAssertEqual(try file.kind(of: "model/double_blocks/0"), .group)
        XCTAssertEqual(try file.kind(of: "model/double_blocks/0/img_mod/weight"), .dataset)
        XCTAssertNil(try file.kind(of: "model/nope"))
        XCTAssertTrue(try file.exists("/model/double_blocks/0/img_mod/weight"))
        XCTAssertFalse(try file.exists("model/double_blocks/1/img_mod/weight"))
        XCTAssertFalse(try file.exists("optimizer/doubles/below_a_dataset"))

        XCTAssertEqual(try file.stringAttribute("format"), "hv-checkpoint")
        XCTAssertEqual(try file.int64Attribute("version"), 3)
        XCTAssertEqual(try file.int64Attribute("step"), 1_000_000_007)
        XCTAssertEqual(try file.doubleAttribute("lr"), 3e-4)
        XCTAssertEqual(try file.int64ArrayAttribute("shape"), [2, 3, 4])
        XCTAssertEqual(try file.doubleArrayAttribute("betas"), [0.9, 0.999])
        XCTAssertEqual(try file.int64ArrayAttribute("empty"), [])
        XCTAssertEqual(try file.stringAttribute("note"), "ünïcödé ✓ — variable length")
        XCTAssertEqual(try file.attribute("fixed"), .string("S-dtype"))
        XCTAssertEqual(Set(try file.attributeNames()),
                       ["format", "version", "step", "lr", "shape", "betas", "empty", "note", "fixed"])
        XCTAssertThrowsError(try file.doubleAttribute("version")) { error in
            guard case HDF5Error.typeMismatch = error else { return XCTFail("expected .typeMismatch, got \(error)") }
        }

        let block = try file.group("model/double_blocks/0")
        XCTAssertEqual(try block.stringAttribute("kind"), "MMDoubleStreamBlock")
        let weight = try block.dataset("img_mod/weight")
        XCTAssertEqual(weight.path, "/model/double_blocks/0/img_mod/weight")
        XCTAssertEqual(try weight.shape(), [2, 3, 4])
        XCTAssertEqual(try weight.elementType(), .float32)
        XCTAssertEqual(try weight.filters(), [.fletcher32])
        XCTAssertNotNil(try weight.chunkShape())
        XCTAssertEqual(try weight.read(as: Float.self), floats)
        XCTAssertEqual(try weight.stringAttribute("dtype"), "float32")

        let bytesSet = try file.dataset("data/bytes")
        XCTAssertEqual(try bytesSet.chunkShape(), [4, 16])
        XCTAssertEqual(try bytesSet.filters(), [.deflate])
        XCTAssertEqual(try bytesSet.read(as: UInt8.self), bytes)

        XCTAssertEqual(try file.read("optimizer/doubles", as: Double.self).map(\.bitPattern), doubles.map(\.bitPattern))
        XCTAssertEqual(try file.dataset("optimizer/step_counts").shape(), [2, 3])
        XCTAssertEqual(try file.read("optimizer/step_counts", as: Int64.self), int64s)
        XCTAssertEqual(try file.read("data/bf16_bits", as: UInt16.self), halves)
        XCTAssertEqual(try file.dataset("data/scalar").shape(), [])
        XCTAssertEqual(try file.read("data/scalar", as: Double.self), [7.5])
        XCTAssertEqual(try file.dataset("data/zero_sized").shape(), [0, 3])
        XCTAssertEqual(try file.read("data/zero_sized", as: Float.self), [])

        // No silent conversion: float32 data read as float64 is an error.
        XCTAssertThrowsError(try weight.read(as: Double.self)) { error in
            guard case HDF5Error.typeMismatch = error else { return XCTFail("expected .typeMismatch, got \(error)") }
        }
        // Read-only: writes fail with HDF5's own message.
        XCTAssertThrowsError(try file.setAttribute("x", 1)) { error in
            guard case HDF5Error.failure(_, let f, _, let message, _) = error else { return XCTFail("got \(error)") }
            XCTAssertEqual(f, path)
            XCTAssertFalse(message.isEmpty)
        }
    }

    func testReadWriteModeKeepsDataAndReplacesAttributes() throws {
        let path = directory.appendingPathComponent("rw.h5").path
        do {
            let file = try H5File(path: path, mode: .create)
            try file.write("a", [Int64(1), 2, 3], shape: [3])
            try file.setAttribute("step", 1)
            try file.close()
        }
        do {
            let file = try H5File(path: path, mode: .readWrite)
            try file.setAttribute("step", 2)
            try file.requireGroup("g/h").write("b", [Float(1)], shape: [1])
            try file.delete("a")
            try file.close()
        }
        let file = try H5File(path: path, mode: .readOnly)
        XCTAssertEqual(try file.int64Attribute("step"), 2)
        XCTAssertEqual(try file.children(), ["g"])
        XCTAssertEqual(try file.read("g/h/b", as: Float.self), [1])
        try file.close()
    }

    func testOpeningGarbageFileThrowsErrorNamingTheFile() throws {
        let path = directory.appendingPathComponent("not-hdf5.h5").path
        var garbage = [UInt8](repeating: 0, count: 4096)
        for i in garbage.indices { garbage[i] = UInt8(truncatingIfNeeded: i &* 7919 &+ 13) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(garbage)))
        XCTAssertFalse(H5File.isHDF5(path: path))

        XCTAssertThrowsError(try H5File(path: path, mode: .readOnly)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(path), "error text should name the file: \(text)")
            guard case HDF5Error.failure(_, _, _, let message, _) = error else { return XCTFail("got \(error)") }
            XCTAssertFalse(message.isEmpty)
        }
        let missing = directory.appendingPathComponent("missing.h5").path
        XCTAssertThrowsError(try H5File(path: missing, mode: .readOnly)) { error in
            guard case HDF5Error.fileNotFound(let f, _) = error else { return XCTFail("got \(error)") }
            XCTAssertEqual(f, missing)
        }
    }

    func testMissingDatasetAndShapeErrorsThrow() throws {
        let path = directory.appendingPathComponent("missing.h5").path
        let file = try H5File(path: path, mode: .create)
        defer { try? file.close() }
        try file.write("present", [Float(1), 2], shape: [2])
        try file.createGroup("grp")

        XCTAssertThrowsError(try file.read("absent", as: Float.self)) { error in
            guard case HDF5Error.notFound(let object, let f, _) = error else { return XCTFail("got \(error)") }
            XCTAssertTrue(object.contains("absent"))
            XCTAssertEqual(f, path)
        }
        XCTAssertThrowsError(try file.dataset("grp"))  // a group is not a dataset
        XCTAssertThrowsError(try file.group("present"))  // and vice versa
        XCTAssertThrowsError(try file.stringAttribute("nope")) { error in
            guard case HDF5Error.notFound = error else { return XCTFail("got \(error)") }
        }
        XCTAssertThrowsError(try file.write("bad", [Float(1), 2, 3], shape: [2, 2])) { error in
            guard case HDF5Error.shapeMismatch = error else { return XCTFail("got \(error)") }
        }
        XCTAssertThrowsError(try file.createGroup("grp"))  // already exists: HDF5's own error
        XCTAssertThrowsError(try file.write("s", [Float(1)], shape: [], options: H5DatasetOptions(fletcher32: true)))
    }
}
