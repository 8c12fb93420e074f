import Foundation
import HVTrain
import XCTest

/// Pure tests of the DeepSpeed-format hosts file: parsing, errors, filters, rank order.
final class HostsFileTests: XCTestCase {
    let sample = """
        # cluster for the tests
        worker-1 slots=2   # trailing comment

        worker-2
        \tworker-3\tslots=3\t
        # end
        """

    func parseSample() throws -> HostsFile { try HostsFile.parse(sample, file: "sample.hosts") }

    func strings(_ slots: [HostSlot]) -> [String] { slots.map { "\($0.host):\($0.slot)" } }

    /// Asserts `body` throws a HostsFileError whose text contains every fragment.
    func assertError(_ body: @autoclosure () throws -> Any, contains fragments: [String],
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssert(error is HostsFileError, "unexpected error type: \(error)", file: file, line: line)
            let text = "\(error)"
            for f in fragments { XCTAssert(text.contains(f), "'\(text)' lacks '\(f)'", file: file, line: line) }
        }
    }

    func testParsesCommentsBlankLinesAndBareHost() throws {
        let h = try parseSample()
        XCTAssertEqual(h.entries, [HostEntry(host: "worker-1", slots: 2, line: 2),
                                   HostEntry(host: "worker-2", slots: 1, line: 4),
                                   HostEntry(host: "worker-3", slots: 3, line: 5)])
        XCTAssertEqual(h.hosts, ["worker-1", "worker-2", "worker-3"])
        XCTAssertEqual(h.worldSize, 6)
    }

    func testRankOrderIsFileOrderThenSlot() throws {
        let h = try HostsFile.parse("b slots=2\na slots=3\n", file: "x")
        XCTAssertEqual(strings(h.slots), ["b:0", "b:1", "a:0", "a:1", "a:2"])
        XCTAssertEqual(h.slots[3], HostSlot(host: "a", slot: 1))
    }

    func testCRLFAndLargeSlots() throws {
        let h = try HostsFile.parse("n1 slots=16\r\nn2 slots=1\r\n", file: "crlf")
        XCTAssertEqual(h.entries.map(\.slots), [16, 1])
        XCTAssertEqual(h.worldSize, 17)
    }

    func testMalformedLines() {
        for (text, line) in [("ok slots=1\nw1 slots=2 extra", 2), ("w1 slot=2", 1), ("w1 slots 2", 1),
                             ("\n\nslots=4", 3), ("a@b slots=1", 1), ("a,b", 1)] {
            assertError(try HostsFile.parse(text, file: "bad.hosts"), contains: ["bad.hosts", "line \(line)", "HOSTNAME slots=N"])
        }
    }

    func testSlotsMustBeAPositiveInteger() {
        for value in ["", "0", "-1", "+4", "x", "2.5", "99999999999999999999999", "10000000000", "\(HostsFile.maxSlotsPerHost + 1)"] {
            assertError(try HostsFile.parse("# c\nw1 slots=\(value)", file: "s.hosts"),
                        contains: ["s.hosts", "line 2", "'\(value)'", "positive integer"])
        }
    }

    func testRepeatedHostNamesBothLines() {
        assertError(try HostsFile.parse("w1 slots=1\nw2 slots=1\n\nw1 slots=4", file: "dup.hosts"),
                    contains: ["dup.hosts", "line 4", "'w1'", "line 1"])
    }

    func testEmptyFile() {
        for text in ["", "\n\n", "# only comments\n   # more\n"] {
            assertError(try HostsFile.parse(text, file: "empty.hosts"), contains: ["empty.hosts", "no hosts"])
        }
    }

    func testLoad() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("hv-hosts-\(getpid()).txt").path
        try "localhost slots=2\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let h = try HostsFile.load(path: path)
        XCTAssertEqual(strings(h.slots), ["localhost:0", "localhost:1"])
        assertError(try HostsFile.load(path: "/nonexistent/hv.hosts"), contains: ["/nonexistent/hv.hosts"])
    }

    func testIncludeHostsAndSlots() throws {
        let h = try parseSample()
        let f = try h.filtered(include: "worker-3:2,0@worker-1", exclude: nil)
        // File order is kept, not the order of the filter terms; ranks are dense.
        XCTAssertEqual(strings(f.slots), ["worker-1:0", "worker-1:1", "worker-3:0", "worker-3:2"])
        XCTAssertEqual(f.worldSize, 4)
        XCTAssertEqual(f.entries.map(\.host), ["worker-1", "worker-3"])
        XCTAssertEqual(f.entries.map(\.slots), [2, 2])
        XCTAssertEqual(f.entries.map(\.line), [2, 5])
        // Terms for the same host are unioned.
        XCTAssertEqual(strings(try h.filtered(include: "worker-3:1@worker-3:2", exclude: nil).slots), ["worker-3:1", "worker-3:2"])
    }

    func testExcludeHostsAndSlots() throws {
        let h = try parseSample()
        XCTAssertEqual(strings(try h.filtered(include: nil, exclude: "worker-2@worker-3:1").slots),
                       ["worker-1:0", "worker-1:1", "worker-3:0", "worker-3:2"])
        XCTAssertEqual(strings(try h.filtered(include: nil, exclude: "worker-1:0").slots),
                       ["worker-1:1", "worker-2:0", "worker-3:0", "worker-3:1", "worker-3:2"])
    }

    func testNoFilterIsIdentity() throws {
        let h = try parseSample()
        XCTAssertEqual(try h.filtered(include: nil, exclude: nil), h)
        XCTAssertEqual(try h.filtered(include: "", exclude: nil), h)
    }

    func testFilterErrors() throws {
        let h = try parseSample()
        assertError(try h.filtered(include: "worker-1", exclude: "worker-2"), contains: ["--include", "--exclude", "mutually exclusive"])
        assertError(try h.filtered(include: "worker-9", exclude: nil), contains: ["'worker-9'", "sample.hosts"])
        assertError(try h.filtered(include: nil, exclude: "worker-1@worker-9:0"), contains: ["--exclude", "'worker-9'"])
        assertError(try h.filtered(include: "worker-1:2", exclude: nil), contains: ["'worker-1'", "slot 2", "sample.hosts"])
        assertError(try h.filtered(include: "worker-1:a", exclude: nil), contains: ["'a'"])
        assertError(try h.filtered(include: "worker-1@", exclude: nil), contains: ["empty term"])
        assertError(try h.filtered(include: nil, exclude: "worker-1@worker-2@worker-3"), contains: ["no slots"])
    }

    func testIsLocal() {
        for h in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]"] { XCTAssert(HostsFile.isLocal(h), h) }
        for h in ["worker-1", "10.77.0.2", "128.0.0.1", "127.0.0", "127.0.0.256", "hv-node1"] { XCTAssertFalse(HostsFile.isLocal(h), h) }
        var buf = [CChar](repeating: 0, count: 256)
        if gethostname(&buf, 255) == 0 { XCTAssert(HostsFile.isLocal(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))) }
    }
}
