import Foundation

/// A synthetic text-to-video dataset on disk: `clip-NNNNN.mp4` files (H.264, yuv420p) rendered by
/// `SyntheticVideo` plus `manifest.jsonl` with one `ManifestEntry` per clip.
///
/// Reproducible: the manifest is a pure function of (count, size, frames, fps, seed) and is
/// byte-identical between runs, and the rendered RGB frames are identical. The mp4 bytes are not
/// guaranteed: on AVX-512 CPUs x264's AVX-512 paths let heap contents leak into encoding decisions
/// (identical YUV input, bitstreams differing run to run, decoded pixels up to ~19/255 apart in
/// a few blocks); with x264 limited to AVX2 (`x264-params asm=...`) or without AVX-512 the files
/// repeat exactly. x264's output also depends on its thread count, hence one thread here.
public enum SyntheticDataset {
    /// The manifest's file name inside a dataset directory.
    public static let manifestName = "manifest.jsonl"
    /// Encoder settings of the clips: near-lossless (crf 18), one thread (x264's decisions depend on it).
    public static let encoderOptions = VideoWriter.Options(crf: 18, preset: "medium", threads: 1)

    /// The file name of clip `index`.
    public static func clipName(_ index: Int) -> String { String(format: "clip-%05d.mp4", index) }

    /// The manifest entry of one rendered clip (path relative to the dataset directory).
    public static func entry(for clip: SyntheticVideo.Clip, index: Int, size: Int, frames: Int, fps: Int) -> ManifestEntry {
        ManifestEntry(path: clipName(index), frames: frames, width: size, height: size, fps: Double(fps),
                      caption: clip.caption,
                      color: SyntheticVideo.colors[clip.color].name, shape: SyntheticVideo.shapes[clip.shape],
                      direction: SyntheticVideo.directions[clip.direction], camera: SyntheticVideo.cameras[clip.camera])
    }

    /// RGB float in [0, 1] to RGB24 (round to nearest).
    public static func rgb24(_ frame: [Float]) -> [UInt8] {
        frame.map { UInt8((min(max($0, 0), 1) * 255).rounded()) }
    }

    /// Writes clips 0..<count and the manifest into `dir` (created if missing). Returns the entries.
    /// `progress` is called after each clip with (done, count).
    @discardableResult
    public static func write(to dir: String, count: Int, size: Int = 64, frames: Int = 17, fps: Int = 8, seed: UInt64 = 0,
                             progress: ((Int, Int) -> Void)? = nil) throws -> [ManifestEntry] {
        guard count >= 0 else { throw DataError.invalidArgument("count must be >= 0, got \(count)") }
        // yuv420p halves the chroma planes, so H.264 needs even sides.
        guard size >= 16, size <= 4096, size % 2 == 0 else { throw DataError.invalidArgument("size must be even and in 16...4096, got \(size)") }
        guard frames >= 1, frames <= 10_000 else { throw DataError.invalidArgument("frames must be in 1...10000, got \(frames)") }
        // A clip is held in memory while it is written: bound it (2^30 bytes of RGB).
        guard size * size * 3 * frames <= 1 << 30 else {
            throw DataError.invalidArgument("a clip of \(frames) frames of \(size)x\(size) is larger than 1 GiB of RGB; use fewer frames or a smaller size")
        }
        guard fps >= 1, fps <= 1000 else { throw DataError.invalidArgument("fps must be in 1...1000, got \(fps)") }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let renderer = SyntheticVideo(size: size, frames: frames, seed: seed)
        var entries: [ManifestEntry] = []
        for i in 0..<count {
            let clip = renderer.clip(i)
            let entry = entry(for: clip, index: i, size: size, frames: frames, fps: fps)
            let path = (dir as NSString).appendingPathComponent(entry.path)
            // Write to a temporary name and rename, so an interrupted run leaves no half clip under the real name.
            let tmp = path + ".tmp-\(getpid()).mp4"
            do {
                let writer = try VideoWriter(path: tmp, width: size, height: size, fps: Double(fps), options: encoderOptions)
                for frame in clip.frames { try writer.append(rgb: rgb24(frame)) }
                try writer.finish()
                _ = try? FileManager.default.removeItem(atPath: path)
                try FileManager.default.moveItem(atPath: tmp, toPath: path)
            } catch {
                try? FileManager.default.removeItem(atPath: tmp)
                throw error
            }
            entries.append(entry)
            progress?(i + 1, count)
        }
        try Manifest.write(entries, to: (dir as NSString).appendingPathComponent(manifestName))
        return entries
    }
}

/// Errors of the dataset and curation code (video errors stay `VideoError`).
public enum DataError: Error, Sendable, CustomStringConvertible {
    /// A manifest line is not a valid entry.
    case malformedManifest(path: String, line: Int, reason: String)
    /// The manifest file cannot be read.
    case unreadableManifest(path: String, reason: String)
    /// A bad argument (size, count, threshold ...).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .malformedManifest(let path, let line, let reason):
            return "manifest '\(path)' line \(line): \(reason); each line must be one JSON object with at least path, frames, width, height, fps"
        case .unreadableManifest(let path, let reason):
            return "manifest '\(path)' cannot be read: \(reason)"
        case .invalidArgument(let why):
            return why
        }
    }
}

/// One clip (or one shot of a clip) of a manifest line. Optional fields are omitted from the
/// JSON when nil: the synthetic manifest has no `start_frame`/`bucket`; curation adds them.
public struct ManifestEntry: Codable, Sendable, Equatable {
    /// Video file, relative to the manifest's directory (or absolute).
    public var path: String
    /// Number of frames of this entry (from `start_frame`).
    public var frames: Int
    public var width: Int
    public var height: Int
    public var fps: Double
    /// Structured caption with the paper's fields (nil for uncaptioned videos).
    public var caption: SyntheticVideo.Caption?
    /// Labels of the synthetic generator (nil for other videos).
    public var color: String?
    public var shape: String?
    public var direction: String?
    public var camera: String?
    /// First frame of this entry in the file (a shot of a longer clip); nil means 0.
    public var start_frame: Int?
    /// Resolution/duration bucket "WxHxT" (set by curation): centre-crop to W x H, take T frames.
    public var bucket: String?

    public init(path: String, frames: Int, width: Int, height: Int, fps: Double, caption: SyntheticVideo.Caption? = nil,
                color: String? = nil, shape: String? = nil, direction: String? = nil, camera: String? = nil,
                start_frame: Int? = nil, bucket: String? = nil) {
        self.path = path
        self.frames = frames
        self.width = width
        self.height = height
        self.fps = fps
        self.caption = caption
        self.color = color
        self.shape = shape
        self.direction = direction
        self.camera = camera
        self.start_frame = start_frame
        self.bucket = bucket
    }

    /// What is out of range in this entry (nil: nothing).
    public var problem: String? {
        if frames < 1 { return "field 'frames': \(frames) must be >= 1" }
        if let start = start_frame {
            if start < 0 { return "field 'start_frame': \(start) must be >= 0" }
            if start.addingReportingOverflow(frames).overflow { return "field 'start_frame': \(start) + frames \(frames) overflows" }
        }
        if width < 0 || height < 0 { return "fields 'width'/'height': \(width)x\(height) must not be negative" }
        if !(fps >= 0) || !fps.isFinite { return "field 'fps': \(fps) must be a finite number >= 0" }
        return nil
    }

    /// A name for logs: the path, with the frame range when this is a shot of a longer file.
    public var label: String {
        guard let start = start_frame else { return path }
        return "\(path)[\(start)..<\(start + frames)]"
    }
}

/// A JSON-lines manifest: one `ManifestEntry` per line; blank lines are ignored.
public struct Manifest: Sendable {
    /// The manifest file.
    public var path: String
    public var entries: [ManifestEntry]

    /// The directory relative paths are resolved against.
    public var directory: String { (path as NSString).deletingLastPathComponent }

    public init(path: String, entries: [ManifestEntry]) {
        self.path = path
        self.entries = entries
    }

    /// Reads a manifest; a malformed line throws `DataError.malformedManifest` naming the line.
    public static func read(_ path: String) throws -> Manifest {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            let missing = !FileManager.default.fileExists(atPath: path)
            throw DataError.unreadableManifest(path: path, reason: missing ? "no such file" : "\(error)")
        }
        let decoder = JSONDecoder()
        var entries: [ManifestEntry] = []
        for (n, line) in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            let entry: ManifestEntry
            do {
                entry = try decoder.decode(ManifestEntry.self, from: Data(line))
            } catch let error as DecodingError {
                throw DataError.malformedManifest(path: path, line: n + 1, reason: Self.describe(error))
            }
            if let problem = entry.problem { throw DataError.malformedManifest(path: path, line: n + 1, reason: problem) }
            entries.append(entry)
        }
        return Manifest(path: path, entries: entries)
    }

    /// Writes entries as JSON lines with sorted keys (so equal entries give equal bytes), atomically;
    /// creates the directory if needed.
    public static func write(_ entries: [ManifestEntry], to path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = Data()
        for entry in entries {
            data.append(try encoder.encode(entry))
            data.append(UInt8(ascii: "\n"))
        }
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// The file of an entry: its path resolved against the manifest's directory.
    public func resolve(_ entry: ManifestEntry) -> String {
        if entry.path.hasPrefix("/") { return entry.path }
        return ((directory.isEmpty ? "." : directory) as NSString).appendingPathComponent(entry.path)
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case .typeMismatch(_, let c), .valueNotFound(_, let c):
            return "field '\(c.codingPath.map(\.stringValue).joined(separator: "."))': \(c.debugDescription)"
        case .dataCorrupted(let c): return "not valid JSON (\(c.debugDescription))"
        @unknown default: return "\(error)"
        }
    }
}
