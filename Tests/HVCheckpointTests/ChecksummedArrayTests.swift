import Foundation
import HVCheckpoint
import HVTensor
import XCTest

/// hv's own dataset checksums: contiguous datasets, per-block `Checksum64` in attributes.
final class ChecksummedArrayTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("hv-cksum-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    /// Every single-bit flip, a swap of two words and a change in the zero-padded tail change the sum.
    func testChecksumSeesEveryBitFlipSwapsAndTails() {
        var bytes = (0..<77).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }  // 2 blocks of 32 + a 13-byte tail
        let base = bytes.withUnsafeBytes { Checksum64.of($0) }
        var sums = Set([base])
        for i in bytes.indices {
            for bit in 0..<8 {
                bytes[i] ^= UInt8(1 << bit)
                sums.insert(bytes.withUnsafeBytes { Checksum64.of($0) })
                bytes[i] ^= UInt8(1 << bit)
            }
        }
        XCTAssertEqual(sums.count, 1 + 77 * 8, "some single-bit flips were not seen")
        var swapped = bytes
        swapped.swapAt(0, 32); swapped.swapAt(1, 33); swapped.swapAt(2, 34); swapped.swapAt(3, 35)  // word 0 <-> word 8 (same lane)
        XCTAssertNotEqual(swapped.withUnsafeBytes { Checksum64.of($0) }, base)
        // A trailing zero byte is not the same data as no byte (the length is mixed in).
        XCTAssertNotEqual((bytes + [0]).withUnsafeBytes { Checksum64.of($0) }, base)
        XCTAssertEqual([UInt8]().withUnsafeBytes { Checksum64.of($0) }, [UInt8]().withUnsafeBytes { Checksum64.of($0) })
    }

    /// Full and ranged reads (inside a block, across blocks, block-aligned) give the written values.
    func testRoundTripAndRangedReads() throws {
        let path = directory.appendingPathComponent("a.h5").path
        let n = 2 * (1 << 20) + 12345   // 3 checksum blocks
        let values = (0..<n).map { Float($0) * 0.5 - 7 }
        do {
            let f = try H5File(path: path, mode: .create)
            try ChecksummedArray.write(f, "units/outer/weights", values)
            try ChecksummedArray.write(f, "units/outer/empty", [Float]())
            try f.close()
        }
        let f = try H5File(path: path, mode: .readOnly)
        defer { try? f.close() }
        XCTAssertEqual(try ChecksummedArray.read(f, "units/outer/weights"), values)
        XCTAssertEqual(try ChecksummedArray.read(f, "units/outer/empty"), [])
        XCTAssertNil(try f.dataset("units/outer/weights").chunkShape(), "contiguous storage")
        XCTAssertEqual(try ChecksummedArray.protection(f.dataset("units/outer/weights")), Checksum64.name)
        for r in [5..<17, (1 << 20) - 3..<(1 << 20) + 9, 0..<(1 << 20), (1 << 20)..<n, n - 1..<n, 100..<100] {
            var out = [Float](repeating: .nan, count: r.count)
            try out.withUnsafeMutableBufferPointer { try ChecksummedArray.read(f, "units/outer/weights", range: r, into: $0) }
            XCTAssertEqual(out, Array(values[r]), "range \(r)")
        }
    }

    /// Flipped bytes inside a dataset: the read fails with an error naming the file, the dataset
    /// and the block; a ranged read of another block still works.
    func testCorruptedDatasetIsReportedWithFileAndDataset() throws {
        let path = directory.appendingPathComponent("rank-00001.h5").path
        let n = (1 << 20) + 1000
        let values = (0..<n).map { Float($0 % 1000) }
        var offset = 0
        do {
            let f = try H5File(path: path, mode: .create)
            try ChecksummedArray.write(f, "units/double_blocks.0/exp_avg", values)
            try f.close()
            let g = try H5File(path: path, mode: .readOnly)
            offset = try XCTUnwrap(try g.dataset("units/double_blocks.0/exp_avg").fileOffset())
            try g.close()
        }
        let h = try XCTUnwrap(FileHandle(forUpdatingAtPath: path))
        try h.seek(toOffset: UInt64(offset + 4 * 123_456 + 2))   // inside block 0
        try h.write(contentsOf: Data([0x5A]))
        try h.close()
        let f = try H5File(path: path, mode: .readOnly)
        defer { try? f.close() }
        XCTAssertThrowsError(try ChecksummedArray.read(f, "units/double_blocks.0/exp_avg")) { e in
            let text = "\(e)"
            XCTAssert(text.contains("rank-00001.h5") && text.contains("units/double_blocks.0/exp_avg") && text.contains("checksum mismatch"), text)
        }
        var tail = [Float](repeating: 0, count: 1000)
        try tail.withUnsafeMutableBufferPointer { try ChecksummedArray.read(f, "units/double_blocks.0/exp_avg", range: (1 << 20)..<n, into: $0) }
        XCTAssertEqual(tail, Array(values[(1 << 20)...]))
    }

    /// Checkpoints written before hv's checksums (HDF5 Fletcher-32 filter) still read, whole and in ranges.
    func testLegacyFletcher32DatasetsStillRead() throws {
        let path = directory.appendingPathComponent("old.h5").path
        let values = (0..<5000).map { Float($0) / 3 }
        do {
            let f = try H5File(path: path, mode: .create)
            try f.write("units/outer/weights", values, shape: [values.count], options: H5DatasetOptions(fletcher32: true))
            try f.close()
        }
        let f = try H5File(path: path, mode: .readOnly)
        defer { try? f.close() }
        XCTAssertEqual(try ChecksummedArray.read(f, "units/outer/weights"), values)
        XCTAssertEqual(try ChecksummedArray.protection(f.dataset("units/outer/weights")), "fletcher32")
        var part = [Float](repeating: 0, count: 10)
        try part.withUnsafeMutableBufferPointer { try ChecksummedArray.read(f, "units/outer/weights", range: 4990..<5000, into: $0) }
        XCTAssertEqual(part, Array(values[4990...]))
    }
}
