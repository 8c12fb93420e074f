import Foundation
import HVTensor

/// `manifest.json` of a checkpoint directory, written last (after every shard file is durable):
/// a directory without a readable manifest is not a checkpoint.
///
/// Layout: RUN_DIR/checkpoints/step-NNNNNNN/{manifest.json, rank-RRRRR.h5}; each rank file holds,
/// for every unit (a DiT block, or `outer`), that rank's contiguous shard of the unit's
/// flattened weights and Adam moments (`units/<unit>/{weights,exp_avg,exp_avg_sq}`: contiguous,
/// with block checksums in attributes, see `ChecksummedArray`; older checkpoints used fletcher32).
/// A tensor's full value is found from `units[].tensors[].offset` in the unit's flat order and the
/// shard ranges, so any world size and ZeRO stage can read any checkpoint.
public struct CheckpointManifest: Codable, Equatable, Sendable {
    public static let formatVersion = 1

    public struct TensorEntry: Codable, Equatable, Sendable {
        public var name: String      // official state-dict name
        public var shape: [Int]
        public var offset: Int       // in the unit's flat order
        public init(name: String, shape: [Int], offset: Int) { self.name = name; self.shape = shape; self.offset = offset }
    }

    public struct ShardEntry: Codable, Equatable, Sendable {
        public var rank: Int
        public var file: String
        public var start: Int
        public var end: Int
        public init(rank: Int, file: String, start: Int, end: Int) { self.rank = rank; self.file = file; self.start = start; self.end = end }
    }

    public struct UnitEntry: Codable, Equatable, Sendable {
        public var name: String
        public var count: Int
        public var tensors: [TensorEntry]
        public var shards: [ShardEntry]
        public init(name: String, count: Int, tensors: [TensorEntry], shards: [ShardEntry]) {
            self.name = name; self.count = count; self.tensors = tensors; self.shards = shards
        }
    }

    public struct DataPosition: Codable, Equatable, Sendable {
        public var epoch: Int
        public var offset: Int
        public var count: Int
        public var seed: UInt64
        public init(epoch: Int, offset: Int, count: Int, seed: UInt64) { self.epoch = epoch; self.offset = offset; self.count = count; self.seed = seed }
    }

    public var format_version = CheckpointManifest.formatVersion
    public var step: Int
    public var samples_seen: Int
    public var tokens_seen: Int
    public var world_size: Int
    public var zero_stage: Int
    /// The full run config (JSON) the checkpoint was trained with.
    public var run_config: String
    /// The model config alone (JSON), for loaders that only need the architecture.
    public var model_config: String
    public var data_position: DataPosition
    public var optimizer_step: Int
    /// Every random draw is a function of (train.seed, step, sample), so the step is the RNG state.
    public var rng: String
    public var units: [UnitEntry]
    public var created: String
    /// What was trained: nil for the DiT, "vae" for the causal VAE (`VAECheckpointing.swift`).
    public var kind: String? = nil

    public init(step: Int, samples_seen: Int, tokens_seen: Int, world_size: Int, zero_stage: Int, run_config: String, model_config: String,
                data_position: DataPosition, optimizer_step: Int, rng: String, units: [UnitEntry]) {
        self.step = step; self.samples_seen = samples_seen; self.tokens_seen = tokens_seen; self.world_size = world_size
        self.zero_stage = zero_stage; self.run_config = run_config; self.model_config = model_config
        self.data_position = data_position; self.optimizer_step = optimizer_step; self.rng = rng; self.units = units
        created = ISO8601DateFormatter().string(from: Date())
    }

    public static func read(directory: String) throws -> CheckpointManifest {
        let path = directory + "/manifest.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError.incomplete(directory: directory, detail: "no manifest.json (an interrupted save?)")
        }
        let m: CheckpointManifest
        do { m = try JSONDecoder().decode(CheckpointManifest.self, from: data) } catch {
            throw CheckpointError.corrupt(file: path, detail: "manifest does not parse: \(error)")
        }
        guard m.format_version == formatVersion else {
            throw CheckpointError.corrupt(file: path, detail: "format version \(m.format_version), this hv reads \(formatVersion)")
        }
        if let problem = m.problem() { throw CheckpointError.corrupt(file: path, detail: problem) }
        return m
    }

    /// More values than any model hv builds (13B parameters is ~1.3e10); a count above it is corrupt.
    public static let maxValues = 1 << 40

    /// The shard file of rank `r` in a checkpoint directory.
    public static func rankFile(_ r: Int) -> String { String(format: "rank-%05d.h5", r) }

    /// What is inconsistent in this manifest (nil: nothing): readers trust its counts, offsets
    /// and shard ranges to size buffers and to know which file holds which values, so a value
    /// out of range must be an error here rather than a trap, or all-zero weights, later.
    public func problem() -> String? {
        guard (1...65536).contains(world_size) else { return "world_size \(world_size) (must be in 1...65536)" }
        guard step >= 0, samples_seen >= 0, tokens_seen >= 0, optimizer_step >= 0 else {
            return "negative step/samples_seen/tokens_seen/optimizer_step"
        }
        guard !units.isEmpty else { return "no units (nothing was saved)" }
        var unitNames = Set<String>(), tensorNames = Set<String>(), total = 0
        for u in units {
            let where_ = "unit \(u.name)"
            guard unitNames.insert(u.name).inserted else { return "\(where_) is listed twice" }
            guard u.count >= 0, u.count <= Self.maxValues else { return "\(where_): count \(u.count) (must be in 0...\(Self.maxValues))" }
            total += u.count
            guard total <= Self.maxValues else { return "\(where_): the units hold more than \(Self.maxValues) values in all" }
            for t in u.tensors {
                guard tensorNames.insert(t.name).inserted else { return "tensor \(t.name) is listed twice" }
                guard !t.shape.contains(where: { $0 < 0 }) else { return "tensor \(t.name): shape \(t.shape) has a negative size" }
                guard let n = checkedShapeCount(t.shape) else { return "tensor \(t.name): shape \(t.shape) is too large" }
                guard t.offset >= 0, t.offset <= u.count, n <= u.count - t.offset else {
                    return "tensor \(t.name): offset \(t.offset) + \(n) values lies outside \(where_)'s \(u.count) values"
                }
            }
            // The shards, in order, must cover 0..<count exactly: a gap would read as zeros.
            var next = 0, ranks = Set<Int>()
            for s in u.shards {
                guard (0..<world_size).contains(s.rank) else { return "\(where_): shard of rank \(s.rank) outside world_size \(world_size)" }
                guard ranks.insert(s.rank).inserted else { return "\(where_): rank \(s.rank) has two shards" }
                guard s.file == Self.rankFile(s.rank) else { return "\(where_): rank \(s.rank)'s shard file is \"\(s.file)\", expected \(Self.rankFile(s.rank))" }
                guard s.start == next, s.end >= s.start, s.end <= u.count else {
                    return "\(where_): shard of rank \(s.rank) covers \(s.start)..<\(s.end); expected it to start at \(next) and end by \(u.count)"
                }
                next = s.end
            }
            guard next == u.count else { return "\(where_): shards cover 0..<\(next) of its \(u.count) values" }
        }
        return nil
    }

    public func encoded() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try enc.encode(self)
    }
}

public enum CheckpointError: Error, CustomStringConvertible {
    case incomplete(directory: String, detail: String)
    case corrupt(file: String, detail: String)
    case notFound(String)
    case configMismatch(checkpoint: String, fields: [String])
    case io(path: String, detail: String)

    public var description: String {
        switch self {
        case .incomplete(let d, let m): "checkpoint \(d) is incomplete: \(m)"
        case .corrupt(let f, let m): "checkpoint file \(f) is corrupt: \(m)"
        case .notFound(let m): m
        case .configMismatch(let c, let f):
            "checkpoint \(c) was trained with a different model config; differing fields: \(f.joined(separator: ", "))"
        case .io(let p, let m): "\(p): \(m)"
        }
    }
}

/// Durable file-system steps for atomic saves. Failures name the path and the errno
/// (`ENOSPC`, `EACCES`, `EROFS`, ...), so "disk full" and "not writable" read as such.
public enum Durable {
    /// The symbolic name of an errno value (falls back to the number).
    public static func errnoName(_ code: Int32) -> String {
        let names: [Int32: String] = [ENOSPC: "ENOSPC", EACCES: "EACCES", EROFS: "EROFS", EDQUOT: "EDQUOT", EPERM: "EPERM",
                                      EIO: "EIO", ENOENT: "ENOENT", ENOTDIR: "ENOTDIR", EEXIST: "EEXIST", EFBIG: "EFBIG",
                                      EMFILE: "EMFILE", ENAMETOOLONG: "ENAMETOOLONG", EXDEV: "EXDEV", EBUSY: "EBUSY"]
        return names[code] ?? "errno \(code)"
    }

    /// "ENOSPC (No space left on device)".
    public static func describe(errno code: Int32) -> String { "\(errnoName(code)) (\(String(cString: strerror(code))))" }

    /// Why writing at `path` may have failed, from the file system's state now: a read-only
    /// file system, a directory this process may not write, or (almost) no free space.
    public static func diagnose(_ path: String) -> String? {
        var dir = path
        let fm = FileManager.default
        var isDir: ObjCBool = false
        while !(fm.fileExists(atPath: dir, isDirectory: &isDir) && isDir.boolValue) && dir != "/" && !dir.isEmpty {
            dir = (dir as NSString).deletingLastPathComponent
        }
        var vfs = statvfs()
        if statvfs(dir, &vfs) == 0 {
            if vfs.f_flag & UInt(ST_RDONLY) != 0 { return "EROFS: the file system holding \(dir) is read-only" }
            let free = UInt64(vfs.f_bavail) * UInt64(vfs.f_frsize)
            if free < 1 << 20 { return "ENOSPC: the file system holding \(dir) is full (\(free) bytes free)" }
        }
        if access(dir, W_OK) != 0 { return "\(describe(errno: errno)): \(dir) is not writable by this process" }
        return nil
    }

    static func failure(_ path: String, _ what: String, _ code: Int32) -> CheckpointError {
        var detail = "\(what): \(describe(errno: code))"
        if let d = diagnose(path), !d.hasPrefix(errnoName(code)) { detail += "; " + d }
        return .io(path: path, detail: detail)
    }

    /// mkdir (the parent must exist).
    public static func makeDirectory(_ path: String) throws {
        guard mkdir(path, 0o755) == 0 else { throw failure(path, "cannot create the directory", errno) }
    }

    /// fsync a file or directory by path.
    public static func sync(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw failure(path, "open for fsync", errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw failure(path, "fsync", errno) }
    }

    /// Writes `data` to `path` atomically: temp file, fsync, rename, fsync of the directory.
    /// On failure the temp file is removed and `path` is untouched.
    public static func write(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw failure(tmp, "cannot create", errno) }
        var ok = true
        var code: Int32 = 0
        data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 { if errno == EINTR { continue }; ok = false; code = errno; return }
                off += n
            }
        }
        if ok && fsync(fd) != 0 { ok = false; code = errno }
        close(fd)
        guard ok else {
            unlink(tmp)
            throw failure(tmp, "writing \(data.count) bytes failed", code)
        }
        do { try rename(tmp, path) } catch { unlink(tmp); throw error }
        try sync((path as NSString).deletingLastPathComponent)
    }

    public static func rename(_ from: String, _ to: String) throws {
        guard Foundation.rename(from, to) == 0 else { throw failure(to, "rename from \(from)", errno) }
    }
}
