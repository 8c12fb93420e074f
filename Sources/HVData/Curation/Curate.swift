import Foundation

// HunyuanVideo's hierarchical data filtering, in small (the paper, "Data Filtering"): split clips
// into single-shot clips, drop clips without motion, drop near-duplicates, and bucket what is
// left by resolution and duration. Each stage sees only what the previous ones kept.
//
// Shots are recorded as frame ranges of the source file (`start_frame` + `frames` in the output
// manifest), not re-encoded: no second generation of coding loss, and a loader decodes the range.
// A split shot inherits its parent's caption and labels (the paper re-captions shots; hv does not).

/// Curation thresholds. Frame statistics are in 8-bit RGB units.
public struct CurationOptions: Sendable {
    /// A cut is declared between frames t-1 and t when the colour-histogram distance between them
    /// (total variation of 16-bin per-channel histograms, averaged over R, G, B; 0 = equal,
    /// 1 = disjoint) exceeds this.
    public var cutThreshold: Double
    /// A shot whose mean absolute difference between consecutive frames (over all RGB values,
    /// 0...255) is below this is dropped as static.
    public var motionThreshold: Double
    /// Two shots are near-duplicates when each of their nine 64-bit perceptual hashes (DCT hash of
    /// the R, G and B planes of the first, middle and last frame) differs in at most this many
    /// bits from its counterpart: the first shot is kept. Measured at 64x64: a crf-23 re-encode
    /// of a textured clip is within 2-6 bits, distinct textured clips >= 34, distinct synthetic
    /// clips >= 8 (100 clips). Flat synthetic clips' re-encodes are NOT caught (their mostly flat
    /// colour planes hash to codec noise); exact copies always are (distance 0).
    public var dupDistance: Int
    /// Shots shorter than this many frames (after rounding down to 4k+1) are dropped.
    public var minFrames: Int
    /// Bucket sides are the frame's sides rounded down to a multiple of this (VAE x8, patch 2).
    public var sizeMultiple: Int

    public init(cutThreshold: Double = 0.3, motionThreshold: Double = 0.3, dupDistance: Int = 6, minFrames: Int = 5,
                sizeMultiple: Int = 16) {
        self.cutThreshold = cutThreshold
        self.motionThreshold = motionThreshold
        self.dupDistance = dupDistance
        self.minFrames = minFrames
        self.sizeMultiple = sizeMultiple
    }

    func validate() throws {
        guard cutThreshold > 0, cutThreshold <= 1 else {
            throw DataError.invalidArgument("cut threshold must be in (0, 1], got \(cutThreshold)")
        }
        guard motionThreshold >= 0 else { throw DataError.invalidArgument("motion threshold must be >= 0, got \(motionThreshold)") }
        guard (0...64).contains(dupDistance) else { throw DataError.invalidArgument("dup distance must be in 0...64, got \(dupDistance)") }
        guard minFrames >= 1 else { throw DataError.invalidArgument("min frames must be >= 1, got \(minFrames)") }
        guard sizeMultiple >= 2, sizeMultiple % 2 == 0 else {
            throw DataError.invalidArgument("size multiple must be even and >= 2, got \(sizeMultiple)")
        }
    }
}

/// Per-frame statistics of one decoded clip, gathered in one streaming pass (one frame in memory).
public struct ClipAnalysis: Sendable {
    public var width: Int
    public var height: Int
    public var fps: Double
    /// cutScores[t]: histogram distance between frames t-1 and t (0 for t = 0).
    public var cutScores: [Double]
    /// differences[t]: mean |frame t - frame t-1| over all RGB values, 0...255 (0 for t = 0).
    public var differences: [Double]
    /// hashes[t]: DCT perceptual hashes of frame t's R, G and B planes (box-filtered to 32x32).
    public var hashes: [[UInt64]]

    public var frameCount: Int { cutScores.count }

    static let bins = 16
    static let thumb = 32

    /// Decodes `frames` frames from `startFrame` (all remaining when nil) of `path`.
    public static func analyze(path: String, startFrame: Int = 0, frames: Int? = nil) throws -> ClipAnalysis {
        let reader = try VideoReader(path: path, threads: 1)
        defer { reader.close() }
        var a = ClipAnalysis(width: reader.width, height: reader.height, fps: reader.fps, cutScores: [], differences: [],
                             hashes: [])
        var previous: VideoFrame?
        var previousHistogram: [Double] = []
        var skipped = 0
        while frames.map({ a.frameCount < $0 }) ?? true, let frame = try reader.nextFrame() {
            if skipped < startFrame {
                skipped += 1
                continue
            }
            let histogram = Self.histogram(frame)
            if let previous {
                a.cutScores.append(zip(histogram, previousHistogram).reduce(0) { $0 + abs($1.0 - $1.1) } / 6)
                a.differences.append(Self.meanAbsoluteDifference(frame, previous))
            } else {
                a.cutScores.append(0)
                a.differences.append(0)
            }
            a.hashes.append((0..<3).map { PerceptualHash.dct(Self.thumbnail(frame, channel: $0), side: thumb) })
            previous = frame
            previousHistogram = histogram
        }
        return a
    }

    /// Per-channel histograms (3 x 16 bins), each normalised to sum 1.
    static func histogram(_ frame: VideoFrame) -> [Double] {
        var counts = [Int](repeating: 0, count: 3 * bins)
        frame.rgb.withUnsafeBufferPointer { p in
            for i in stride(from: 0, to: p.count, by: 3) {
                counts[Int(p[i]) >> 4] += 1
                counts[bins + Int(p[i + 1]) >> 4] += 1
                counts[2 * bins + Int(p[i + 2]) >> 4] += 1
            }
        }
        let n = Double(max(1, frame.width * frame.height))
        return counts.map { Double($0) / n }
    }

    static func meanAbsoluteDifference(_ a: VideoFrame, _ b: VideoFrame) -> Double {
        var sum = 0
        a.rgb.withUnsafeBufferPointer { p in
            b.rgb.withUnsafeBufferPointer { q in
                for i in 0..<p.count { sum += abs(Int(p[i]) - Int(q[i])) }
            }
        }
        return Double(sum) / Double(max(1, a.rgb.count))
    }

    /// One colour plane box-averaged to 32x32; frames smaller than 32 repeat pixels.
    static func thumbnail(_ frame: VideoFrame, channel: Int) -> [Float] {
        let w = frame.width, h = frame.height, n = thumb
        var out = [Float](repeating: 0, count: n * n)
        frame.rgb.withUnsafeBufferPointer { p in
            for by in 0..<n {
                let y0 = by * h / n, y1 = max((by + 1) * h / n, y0 + 1)
                for bx in 0..<n {
                    let x0 = bx * w / n, x1 = max((bx + 1) * w / n, x0 + 1)
                    var sum = 0
                    for y in y0..<y1 {
                        for x in x0..<x1 { sum += Int(p[(y * w + x) * 3 + channel]) }
                    }
                    out[by * n + bx] = Float(sum) / Float((y1 - y0) * (x1 - x0))
                }
            }
        }
        return out
    }

    /// Frame ranges of the shots: a new shot starts at every t with cutScores[t] > threshold.
    public func shots(cutThreshold: Double) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var start = 0
        for t in 1..<max(1, frameCount) where cutScores[t] > cutThreshold {
            result.append(start..<t)
            start = t
        }
        if frameCount > start { result.append(start..<frameCount) }
        return result
    }

    /// Mean absolute consecutive-frame difference inside a shot (0 for a one-frame shot).
    public func motion(_ shot: Range<Int>) -> Double {
        guard shot.count > 1 else { return 0 }
        let inside = differences[(shot.lowerBound + 1)..<shot.upperBound]
        return inside.reduce(0, +) / Double(inside.count)
    }

    /// The shot's signature: R, G, B hashes of its first, middle and last frame. Several frames
    /// because a middle frame alone cannot tell a shape moving left from one moving right; colour
    /// planes because a luma hash, invariant to contrast, cannot tell a yellow shape from a purple one.
    public func signature(_ shot: Range<Int>) -> [UInt64] {
        [shot.lowerBound, shot.lowerBound + shot.count / 2, shot.upperBound - 1].flatMap { hashes[$0] }
    }

    /// Largest histogram distance between consecutive frames inside the shot.
    public func maxCutScore(_ shot: Range<Int>) -> Double {
        shot.count > 1 ? cutScores[(shot.lowerBound + 1)..<shot.upperBound].max()! : 0
    }
}

/// 64-bit perceptual hashes of one image plane.
public enum PerceptualHash {
    /// pHash as in the `imagehash` package: 2-D DCT-II of a 32x32 image, the 8x8 lowest
    /// frequencies, bit (8v + u) set when coefficient (v, u) is above their median.
    public static func dct(_ image: [Float], side: Int = 32) -> UInt64 {
        precondition(image.count == side * side, "pHash needs a \(side)x\(side) image")
        let k = 8
        // cosines[u][x] = cos(pi (2x + 1) u / 2N)
        let cosines: [[Double]] = (0..<k).map { u in
            (0..<side).map { x in cos(Double.pi * Double(2 * x + 1) * Double(u) / Double(2 * side)) }
        }
        var rows = [Double](repeating: 0, count: side * k)  // [side][k]: DCT along x of each row
        for y in 0..<side {
            for u in 0..<k {
                var s = 0.0
                for x in 0..<side { s += Double(image[y * side + x]) * cosines[u][x] }
                rows[y * k + u] = s
            }
        }
        var coefficients = [Double](repeating: 0, count: k * k)  // [v][u]
        for v in 0..<k {
            for u in 0..<k {
                var s = 0.0
                for y in 0..<side { s += rows[y * k + u] * cosines[v][y] }
                coefficients[v * k + u] = s
            }
        }
        let sorted = coefficients.sorted()
        let median = (sorted[k * k / 2 - 1] + sorted[k * k / 2]) / 2
        var hash: UInt64 = 0
        for (i, c) in coefficients.enumerated() where c > median { hash |= 1 << UInt64(i) }
        return hash
    }

    public static func distance(_ a: UInt64, _ b: UInt64) -> Int { (a ^ b).nonzeroBitCount }

    /// Distance of two signatures (equal-length hash lists): the largest per-hash distance.
    public static func distance(_ a: [UInt64], _ b: [UInt64]) -> Int {
        precondition(a.count == b.count, "signatures of different lengths")
        return zip(a, b).map { distance($0, $1) }.max() ?? 0
    }
}

/// What curation did: counts per stage, every dropped clip or shot with its reason, and the kept
/// entries (with `start_frame` and `bucket`).
public struct CurationReport: Sendable {
    public struct Stage: Sendable, Equatable {
        public var name: String
        public var input: Int
        public var output: Int
        public var note: String
    }

    public struct Drop: Sendable, Equatable {
        /// The entry's label: its path, with a frame range for a shot.
        public var label: String
        public var stage: String
        public var reason: String
    }

    /// One shot after splitting, with its statistics (for tuning thresholds).
    public struct Shot: Sendable, Equatable {
        public var label: String
        public var motion: Double
        /// Largest histogram distance between consecutive frames inside the shot.
        public var maxCutScore: Double
        /// R, G, B perceptual hashes of the first, middle and last frame.
        public var signature: [UInt64]
    }

    public var stages: [Stage] = []
    public var drops: [Drop] = []
    public var shots: [Shot] = []
    /// Source label -> shot ranges, for clips split into more than one shot.
    public var splits: [(label: String, shots: [Range<Int>])] = []
    public var kept: [ManifestEntry] = []

    /// The reason `label` was dropped, if it was.
    public func dropReason(_ label: String) -> String? { drops.first { $0.label == label }?.reason }
}

/// Runs the filtering stages over a manifest.
public enum Curator {
    public static let stageNames = ["decode", "shot split", "motion", "dedup", "bucket"]

    /// The bucket of a clip: sides rounded down to `multiple`, frames rounded down to 4k+1 (the
    /// causal VAE's 1 + 4k frame counts), within the limits a bucket may have (sides at most
    /// `ClipLoader.Bucket.maxSide`, the clip centre-cropped to them; frames cut so that the bucket
    /// holds at most `maxFrames` and `maxPixels`). Nil when a side is below `multiple`.
    public static func bucket(width: Int, height: Int, frames: Int, multiple: Int = 16) -> (width: Int, height: Int, frames: Int)? {
        let limit = ClipLoader.Bucket.maxSide / multiple * multiple
        let w = min(width / multiple * multiple, limit), h = min(height / multiple * multiple, limit)
        guard w > 0, h > 0, frames >= 1 else { return nil }
        let t = min(frames, ClipLoader.Bucket.maxFrames, max(1, ClipLoader.Bucket.maxPixels / (w * h)))
        return (w, h, (t - 1) / 4 * 4 + 1)
    }

    public static func bucketKey(width: Int, height: Int, frames: Int) -> String { "\(width)x\(height)x\(frames)" }

    /// Curates `manifest`; output paths are made relative to `outputDirectory` (absolute paths
    /// when nil). Unreadable or truncated files are dropped with their error, never thrown.
    public static func curate(_ manifest: Manifest, options: CurationOptions = .init(), outputDirectory: String? = nil,
                              log: ((String) -> Void)? = nil) throws -> CurationReport {
        try options.validate()
        var report = CurationReport()
        func drop(_ label: String, _ stage: String, _ reason: String) {
            report.drops.append(.init(label: label, stage: stage, reason: reason))
            log?("dropped \(label) [\(stage)]: \(reason)")
        }

        // 1. Decode every clip once, gathering per-frame statistics.
        var readable: [(entry: ManifestEntry, analysis: ClipAnalysis)] = []
        for entry in manifest.entries {
            let start = entry.start_frame ?? 0
            do {
                let a = try ClipAnalysis.analyze(path: manifest.resolve(entry), startFrame: start, frames: entry.frames)
                if a.frameCount < entry.frames {
                    drop(entry.label, "decode", "truncated: decoded \(a.frameCount) of the manifest's \(entry.frames) frames")
                    continue
                }
                readable.append((entry, a))
            } catch {
                drop(entry.label, "decode", "unreadable: \(error)")
            }
        }
        report.stages.append(.init(name: "decode", input: manifest.entries.count, output: readable.count, note: "clips"))

        // 2. Shot boundaries: every clip becomes one entry per shot.
        struct Candidate { var entry: ManifestEntry; var analysis: ClipAnalysis; var shot: Range<Int> }
        var candidates: [Candidate] = []
        var splitCount = 0
        for (entry, analysis) in readable {
            let shots = analysis.shots(cutThreshold: options.cutThreshold)
            if shots.count > 1 {
                splitCount += 1
                report.splits.append((entry.label, shots))
                log?("split \(entry.label) into \(shots.count) shots at frames \(shots.dropFirst().map(\.lowerBound))")
            }
            for shot in shots {
                var e = entry
                e.start_frame = (entry.start_frame ?? 0) + shot.lowerBound
                e.frames = shot.count
                e.width = analysis.width
                e.height = analysis.height
                if analysis.fps > 0 { e.fps = analysis.fps }
                candidates.append(Candidate(entry: e, analysis: analysis, shot: shot))
            }
        }
        report.stages.append(.init(name: "shot split", input: readable.count, output: candidates.count,
                                   note: "shots; \(splitCount) clip(s) split"))

        // 3. Motion filter.
        var moving: [(Candidate, [UInt64])] = []
        for c in candidates {
            let motion = c.analysis.motion(c.shot), signature = c.analysis.signature(c.shot)
            report.shots.append(.init(label: c.entry.label, motion: motion, maxCutScore: c.analysis.maxCutScore(c.shot),
                                      signature: signature))
            if motion < options.motionThreshold {
                drop(c.entry.label, "motion", String(format: "static: mean frame difference %.3f < %.3f", motion,
                                                     options.motionThreshold))
            } else {
                moving.append((c, signature))
            }
        }
        report.stages.append(.init(name: "motion", input: candidates.count, output: moving.count, note: "shots"))

        // 4. Near-duplicates: keep the first of each group, in manifest order.
        var unique: [(Candidate, [UInt64])] = []
        for (c, signature) in moving {
            if let (first, d) = unique.lazy.map({ ($0.0, PerceptualHash.distance($0.1, signature)) })
                .first(where: { $0.1 <= options.dupDistance })
            {
                drop(c.entry.label, "dedup", "duplicate of \(first.entry.label) (pHash distance \(d) <= \(options.dupDistance))")
            } else {
                unique.append((c, signature))
            }
        }
        report.stages.append(.init(name: "dedup", input: moving.count, output: unique.count, note: "shots"))

        // 5. Buckets.
        for (c, _) in unique {
            var e = c.entry
            guard let b = bucket(width: e.width, height: e.height, frames: e.frames, multiple: options.sizeMultiple) else {
                drop(e.label, "bucket", "too small: \(e.width)x\(e.height) has a side below \(options.sizeMultiple)")
                continue
            }
            guard b.frames >= options.minFrames else {
                drop(e.label, "bucket", "too short: \(e.frames) frame(s) (bucket \(b.frames)) < \(options.minFrames)")
                continue
            }
            e.bucket = bucketKey(width: b.width, height: b.height, frames: b.frames)
            let source = manifest.resolve(c.entry)
            e.path = outputDirectory.map { relativePath(of: source, from: $0) } ?? absolutePath(source)
            report.kept.append(e)
        }
        report.stages.append(.init(name: "bucket", input: unique.count, output: report.kept.count, note: "shots"))
        return report
    }

    /// Reads the input manifest, curates it and writes the kept entries to `output` (paths
    /// relative to the output manifest's directory).
    public static func curate(input: String, output: String, options: CurationOptions = .init(),
                              log: ((String) -> Void)? = nil) throws -> CurationReport {
        let manifest = try Manifest.read(input)
        let outDir = (output as NSString).deletingLastPathComponent
        let report = try curate(manifest, options: options, outputDirectory: outDir.isEmpty ? "." : outDir, log: log)
        try Manifest.write(report.kept, to: output)
        return report
    }
}

func absolutePath(_ path: String) -> String {
    let full = path.hasPrefix("/") ? path : (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(path)
    return (full as NSString).standardizingPath
}

/// `file` relative to `directory` (both made absolute first), with ".." where needed.
func relativePath(of file: String, from directory: String) -> String {
    let f = absolutePath(file).split(separator: "/"), d = absolutePath(directory).split(separator: "/")
    var common = 0
    while common < min(f.count, d.count), f[common] == d[common] { common += 1 }
    let parts = Array(repeating: "..", count: d.count - common) + f[common...].map(String.init)
    return parts.joined(separator: "/")
}
