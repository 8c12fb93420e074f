import Foundation
import XCTest

/// Runs the `hv-testpeer` executable built next to the test bundle.
///
/// `swift test` (any configuration, any scratch path) puts executables and the test bundle in
/// the same products directory (`.build/<triple>/<config>`), so the peer is looked up beside the
/// running test binary (Linux: the `.xctest` executable) and the `.xctest` bundle (macOS).
/// `HV_TESTPEER=/path/to/hv-testpeer` overrides the lookup.
final class PeerProcess {
    let process = Process()
    private let stdout = Pipe()
    private let stderr = Pipe()
    private var stdoutBuffer = Data()

    init(_ arguments: [String]) throws {
        process.executableURL = try Self.locate()
        process.arguments = arguments
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    static func locate() throws -> URL {
        let fm = FileManager.default
        if let override = ProcessInfo.processInfo.environment["HV_TESTPEER"] {
            return URL(fileURLWithPath: override)
        }
        var directories: [URL] = []
        directories.append(Bundle(for: PeerProcess.self).bundleURL.deletingLastPathComponent())
        if let executable = Bundle.main.executableURL {
            directories.append(executable.resolvingSymlinksInPath().deletingLastPathComponent())
        }
        let argv0 = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        directories.append(argv0.deletingLastPathComponent())
        // macOS: the binary sits inside hvPackageTests.xctest/Contents/MacOS.
        for dir in directories where dir.path.contains(".xctest") {
            var up = dir
            while up.path.contains(".xctest") { up.deleteLastPathComponent() }
            directories.append(up)
        }
        var seen = Set<String>()
        directories = directories.filter { seen.insert($0.standardizedFileURL.path).inserted }
        for dir in directories {
            let candidate = dir.appendingPathComponent("hv-testpeer")
            if fm.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        let searched = directories.map(\.path).joined(separator: ", ")
        throw PeerError("hv-testpeer not found next to the test binary (searched: \(searched)); "
            + "build it (`swift build --product hv-testpeer`) or set HV_TESTPEER")
    }

    /// Waits for the peer to exit; kills it and throws if it takes longer than `timeout` seconds.
    func waitForExit(timeout: TimeInterval) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline {
                terminateIfRunning()
                throw PeerError("hv-testpeer did not exit within \(timeout) s; stderr: \(standardErrorText())")
            }
            usleep(10_000)
        }
        return process.terminationStatus
    }

    /// Reads one line of the peer's standard output (without the newline).
    func readStandardOutputLine(timeout: TimeInterval) throws -> String {
        let handle = stdout.fileHandleForReading
        let deadline = Date().addingTimeInterval(timeout)
        while !stdoutBuffer.contains(UInt8(ascii: "\n")) {
            if Date() > deadline { throw PeerError("no output line from hv-testpeer within \(timeout) s") }
            var poll = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
            guard Foundation.poll(&poll, 1, 100) > 0 else { continue }
            let chunk = handle.availableData
            if chunk.isEmpty { throw PeerError("hv-testpeer closed its output; stderr: \(standardErrorText())") }
            stdoutBuffer.append(chunk)
        }
        let newline = stdoutBuffer.firstIndex(of: UInt8(ascii: "\n"))!
        let line = String(decoding: stdoutBuffer[..<newline], as: UTF8.self)
        stdoutBuffer.removeSubrange(...newline)
        return line
    }

    /// The peer's standard error so far (only once it has exited, to avoid blocking).
    func standardErrorText() -> String {
        guard !process.isRunning else { return "(peer still running)" }
        return String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }

    func terminateIfRunning() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

struct PeerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
