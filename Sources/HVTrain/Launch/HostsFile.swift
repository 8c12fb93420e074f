import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One worker slot: a host and a local rank on it.
public struct HostSlot: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    /// The local rank (LOCAL_RANK) on `host`; after filtering not necessarily contiguous.
    public var slot: Int
    public init(host: String, slot: Int) { self.host = host; self.slot = slot }
    public var description: String { "\(host):\(slot)" }
}

/// One host line of a hosts file.
public struct HostEntry: Sendable, Equatable {
    public var host: String
    /// Number of slots kept on this host (after `filtered`, the count of kept slot indices).
    public var slots: Int
    /// 1-based line in the source file (0 for hosts not read from a file).
    public var line: Int
    public init(host: String, slots: Int, line: Int = 0) { self.host = host; self.slots = slots; self.line = line }
}

/// A DeepSpeed-style hosts file: which machines take part and how many workers each runs.
///
/// Format, one host per line (as DeepSpeed's `^(\S+)\s+slots=(\d+)$`, after trimming):
/// ```
/// # comment
/// worker-1 slots=8   # trailing comment
/// worker-2           # a bare hostname means slots=1
/// ```
/// A repeated host is an error (hostnames compare exactly, case-sensitively). Hostnames may not
/// contain `@` or `,` (they separate terms of `--include`/`--exclude`).
///
/// Ranks are assigned in `slots` order: hosts in file order, then slot index.
public struct HostsFile: Sendable, Equatable {
    /// The file name used in error messages.
    public private(set) var file: String
    public private(set) var entries: [HostEntry]
    /// Every worker slot in rank order; `slots[rank]` is where rank `rank` runs.
    public private(set) var slots: [HostSlot]

    public var worldSize: Int { slots.count }
    /// More workers than this on one host is a typo, not a machine (each is a process with its
    /// own model copy); `slots=` above it is refused instead of allocating the slot list.
    public static let maxSlotsPerHost = 4096
    public var hosts: [String] { entries.map(\.host) }

    /// Hosts given in code (e.g. `--nodes localhost:2`); every host gets slots `0..<slots`.
    public init(file: String = "<command line>", entries: [HostEntry]) throws {
        var seen: [String: Int] = [:]
        for e in entries {
            guard e.slots > 0, e.slots <= HostsFile.maxSlotsPerHost else { throw HostsFileError.badSlots(file: file, line: e.line, value: "\(e.slots)") }
            if let first = seen[e.host] { throw HostsFileError.duplicateHost(file: file, host: e.host, firstLine: first, line: e.line) }
            seen[e.host] = e.line
        }
        guard !entries.isEmpty else { throw HostsFileError.empty(file: file, lines: 0) }
        self.init(file: file, entries: entries, slots: entries.flatMap { e in (0..<e.slots).map { HostSlot(host: e.host, slot: $0) } })
    }

    private init(file: String, entries: [HostEntry], slots: [HostSlot]) {
        self.file = file; self.entries = entries; self.slots = slots
    }

    // MARK: Parsing

    public static func load(path: String) throws -> HostsFile {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw HostsFileError.unreadable(file: path, reason: error.localizedDescription)
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws -> HostsFile {
        var entries: [HostEntry] = []
        // isNewline, not "\n": "\r\n" is one Character in Swift.
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
        for (i, raw) in lines.enumerated() {
            let n = i + 1
            let body = (raw.firstIndex(of: "#").map { raw[..<$0] } ?? raw[...]).trimmingCharacters(in: .whitespacesAndNewlines)
            if body.isEmpty { continue }
            let fields = body.split(whereSeparator: { $0 == " " || $0 == "\t" })
            let host = String(fields[0])
            var slots = 1
            if fields.count > 2 || host.hasPrefix("slots=") || host.contains(where: { $0 == "@" || $0 == "," }) {
                throw HostsFileError.malformed(file: file, line: n, text: body)
            }
            if fields.count == 2 {
                guard fields[1].hasPrefix("slots=") else { throw HostsFileError.malformed(file: file, line: n, text: body) }
                let value = fields[1].dropFirst("slots=".count)
                // \d+ only: Int("+4") would parse, the regex would not.
                guard !value.isEmpty, value.allSatisfy({ $0.isASCII && $0.isNumber }), let v = Int(value), v > 0, v <= HostsFile.maxSlotsPerHost else {
                    throw HostsFileError.badSlots(file: file, line: n, value: String(value))
                }
                slots = v
            }
            if let first = entries.first(where: { $0.host == host }) {
                throw HostsFileError.duplicateHost(file: file, host: host, firstLine: first.line, line: n)
            }
            entries.append(HostEntry(host: host, slots: slots, line: n))
        }
        guard !entries.isEmpty else {
            throw HostsFileError.empty(file: file, lines: lines.last == "" ? lines.count - 1 : lines.count)
        }
        return try HostsFile(file: file, entries: entries)
    }

    // MARK: Filtering

    /// Keeps (`include`) or drops (`exclude`) hosts or slots, in DeepSpeed's syntax:
    /// `worker-2:0,1@worker-3` — `@` separates terms, `host:0,1` names slot indices, a bare host
    /// means all of its slots. Nil or empty means no filter; both at once is an error. The result
    /// keeps file order and each host's remaining slot indices (ranks are renumbered densely).
    public func filtered(include: String?, exclude: String?) throws -> HostsFile {
        let inc = include?.trimmingCharacters(in: .whitespaces) ?? "", exc = exclude?.trimmingCharacters(in: .whitespaces) ?? ""
        if !inc.isEmpty && !exc.isEmpty { throw HostsFileError.includeAndExclude(include: inc, exclude: exc) }
        if inc.isEmpty && exc.isEmpty { return self }
        let option = inc.isEmpty ? "--exclude" : "--include"
        let named = try parseFilter(inc.isEmpty ? exc : inc, option: option)
        let kept = slots.filter { s in
            let hit = named[s.host].map { $0 == nil || $0!.contains(s.slot) } ?? false
            return inc.isEmpty ? !hit : hit
        }
        guard !kept.isEmpty else { throw HostsFileError.nothingLeft(file: file, option: option, value: inc.isEmpty ? exc : inc) }
        let newEntries = entries.compactMap { e -> HostEntry? in
            let n = kept.lazy.filter { $0.host == e.host }.count
            return n == 0 ? nil : HostEntry(host: e.host, slots: n, line: e.line)
        }
        return HostsFile(file: file, entries: newEntries, slots: kept)
    }

    /// host -> nil (all slots) or the named slot indices; repeated terms for a host are unioned.
    private func parseFilter(_ value: String, option: String) throws -> [String: Set<Int>?] {
        var result: [String: Set<Int>?] = [:]
        for term in value.split(separator: "@", omittingEmptySubsequences: false).map({ $0.trimmingCharacters(in: .whitespaces) }) {
            func bad(_ why: String) -> HostsFileError { .badFilter(option: option, term: term, reason: why) }
            guard !term.isEmpty else { throw bad("empty term; expected HOST or HOST:SLOT[,SLOT...] separated by '@'") }
            // A whole-term match first, so hosts with ':' (e.g. "::1") can be named bare.
            var host = term, list: Substring? = nil
            if !entries.contains(where: { $0.host == term }), let colon = term.lastIndex(of: ":") {
                host = String(term[..<colon]); list = term[term.index(after: colon)...]
            }
            guard let entry = entries.first(where: { $0.host == host }) else {
                throw HostsFileError.unknownHost(file: file, option: option, host: host, known: hosts)
            }
            guard let list else { result[host] = .some(nil); continue }
            var indices = Set<Int>()
            for item in list.split(separator: ",", omittingEmptySubsequences: false) {
                guard !item.isEmpty, item.allSatisfy({ $0.isASCII && $0.isNumber }), let i = Int(item) else {
                    throw bad("'\(item)' is not a slot index; expected HOST:0,1,...")
                }
                guard slots.contains(HostSlot(host: host, slot: i)) else {
                    throw HostsFileError.unknownSlot(file: file, option: option, host: host, slot: i,
                                                     available: slots.filter { $0.host == host }.map(\.slot), line: entry.line)
                }
                indices.insert(i)
            }
            if case .some(.some(let old)) = result[host] { indices.formUnion(old) }
            if case .some(.none) = result[host] { continue }  // already all slots
            result[host] = .some(indices)
        }
        return result
    }

    // MARK: Locality

    /// True for hosts that are this machine: `localhost`, `127.x.x.x`, `::1`, and this machine's
    /// hostname (full or short form, case-insensitive). Local hosts are started without ssh.
    public static func isLocal(_ host: String) -> Bool {
        let h = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if h == "localhost" || h == "localhost.localdomain" || h == "::1" || h == "0:0:0:0:0:0:0:1" { return true }
        let octets = h.split(separator: ".", omittingEmptySubsequences: false)
        if octets.count == 4, octets[0] == "127", octets.allSatisfy({ Int($0).map { (0...255).contains($0) } ?? false }) { return true }
        guard let me = machineHostname()?.lowercased(), !me.isEmpty else { return false }
        func short(_ s: String) -> Substring { s.split(separator: ".").first ?? Substring(s) }
        return h == me || (!h.contains(".") && short(me) == h) || (!me.contains(".") && short(h) == me)
    }

    /// gethostname(2), not ProcessInfo.hostName, which may do a DNS lookup.
    private static func machineHostname() -> String? {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return nil }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

public enum HostsFileError: Error, Equatable, CustomStringConvertible {
    case unreadable(file: String, reason: String)
    case malformed(file: String, line: Int, text: String)
    case badSlots(file: String, line: Int, value: String)
    case duplicateHost(file: String, host: String, firstLine: Int, line: Int)
    case empty(file: String, lines: Int)
    case includeAndExclude(include: String, exclude: String)
    case badFilter(option: String, term: String, reason: String)
    case unknownHost(file: String, option: String, host: String, known: [String])
    case unknownSlot(file: String, option: String, host: String, slot: Int, available: [Int], line: Int)
    case nothingLeft(file: String, option: String, value: String)

    private static let expected = "expected 'HOSTNAME slots=N' (or a bare HOSTNAME for slots=1), '#' comments allowed"

    public var description: String {
        switch self {
        case let .unreadable(file, reason):
            return "\(file): cannot read hosts file (\(reason)); check the path given to --hostfile"
        case let .malformed(file, line, text):
            return "\(file) line \(line): malformed host line '\(text)'; \(Self.expected)"
        case let .badSlots(file, line, value):
            return "\(file) line \(line): slots='\(value)' is not a positive integer up to \(HostsFile.maxSlotsPerHost); expected slots=N with 1 <= N <= \(HostsFile.maxSlotsPerHost)"
        case let .duplicateHost(file, host, firstLine, line):
            return "\(file) line \(line): host '\(host)' repeated (first at line \(firstLine)); list each host once with its total slots"
        case let .empty(file, lines):
            return "\(file): no hosts (\(lines) line\(lines == 1 ? "" : "s"), all blank or comments); \(Self.expected)"
        case let .includeAndExclude(include, exclude):
            return "--include '\(include)' and --exclude '\(exclude)' are mutually exclusive; give one of them"
        case let .badFilter(option, term, reason):
            return "\(option): bad term '\(term)': \(reason)"
        case let .unknownHost(file, option, host, known):
            return "\(option): host '\(host)' is not in \(file) (hosts there: \(known.joined(separator: ", ")))"
        case let .unknownSlot(file, option, host, slot, available, line):
            return "\(option): host '\(host)' has no slot \(slot) in \(file) line \(line) (slots: \(available.map(String.init).joined(separator: ",")))"
        case let .nothingLeft(file, option, value):
            return "\(option) '\(value)' leaves no slots of \(file) to run on"
        }
    }
}
