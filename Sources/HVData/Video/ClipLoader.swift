import Foundation

/// Loads a manifest entry as its bucket asks: frames [start_frame, start_frame + T), centre-cropped
/// to W x H (up-scaled first, keeping the aspect ratio, when the source is smaller than the bucket;
/// curation's buckets are never larger, so its clips are only cropped).
public enum ClipLoader {
    public struct Bucket: Sendable, Equatable, Hashable, CustomStringConvertible {
        public var width: Int, height: Int, frames: Int
        public init(width: Int, height: Int, frames: Int) { self.width = width; self.height = height; self.frames = frames }
        public var description: String { Curator.bucketKey(width: width, height: height, frames: frames) }

        /// Largest bucket a manifest may name (a clip of it is decoded into memory whole).
        public static let maxSide = 4096, maxFrames = 4096, maxPixels = 1 << 28

        /// Parses "WxHxT" (sides in 1...maxSide, frames in 1...maxFrames, W x H x T <= maxPixels).
        public init?(key: String) {
            let p = key.split(separator: "x").map { Int($0) }
            guard p.count == 3, let w = p[0], let h = p[1], let t = p[2], (1...Self.maxSide).contains(w), (1...Self.maxSide).contains(h),
                  (1...Self.maxFrames).contains(t), w * h * t <= Self.maxPixels else { return nil }
            self.init(width: w, height: h, frames: t)
        }
    }

    /// The entry's `bucket` ("WxHxT", set by `hv-data curate`) or, when it has none, the bucket
    /// curation would give it (sides down to a multiple of 16, frames down to 4k+1).
    public static func bucket(of entry: ManifestEntry, manifest: String) throws -> Bucket {
        if let key = entry.bucket {
            guard let b = Bucket(key: key) else {
                throw DataError.invalidArgument("manifest '\(manifest)' entry \(entry.label): field 'bucket' is '\(key)', expected WxHxT (e.g. 64x64x17; sides <= \(Bucket.maxSide), frames <= \(Bucket.maxFrames), W x H x T <= \(Bucket.maxPixels))")
            }
            return b
        }
        guard let b = Curator.bucket(width: entry.width, height: entry.height, frames: entry.frames) else {
            throw DataError.invalidArgument("manifest '\(manifest)' entry \(entry.label): \(entry.width)x\(entry.height) is too small for a bucket (sides >= 16)")
        }
        return Bucket(width: b.width, height: b.height, frames: b.frames)
    }

    /// Decodes `frames` frames from `startFrame` of `path` and centre-crops them to the bucket.
    /// Too few frames or an unreadable file throw, naming the file.
    public static func load(path: String, startFrame: Int = 0, bucket: Bucket) throws -> [VideoFrame] {
        let probe = try VideoReader(path: path, threads: 1)
        let sw = probe.width, sh = probe.height
        probe.close()
        // Cover the bucket, keeping the aspect ratio (no scaling when the source already covers it).
        let scale = max(1, max(Double(bucket.width) / Double(sw), Double(bucket.height) / Double(sh)))
        let w = scale > 1 ? max(bucket.width, Int((Double(sw) * scale).rounded(.up))) : sw
        let h = scale > 1 ? max(bucket.height, Int((Double(sh) * scale).rounded(.up))) : sh
        let reader = try VideoReader(path: path, outputWidth: w, outputHeight: h, threads: 1)
        defer { reader.close() }
        var skipped = 0
        while skipped < startFrame {
            guard try reader.nextFrame() != nil else {
                throw DataError.invalidArgument("'\(path)': start_frame \(startFrame) is past the end (\(skipped) frames)")
            }
            skipped += 1
        }
        let frames = try reader.readFrames(count: bucket.frames)
        guard frames.count == bucket.frames else {
            throw DataError.invalidArgument("'\(path)': bucket \(bucket) needs \(bucket.frames) frames from frame \(startFrame), the file has only \(frames.count)")
        }
        let x0 = (w - bucket.width) / 2, y0 = (h - bucket.height) / 2
        if x0 == 0 && y0 == 0 && w == bucket.width && h == bucket.height { return frames }
        return frames.map { f in
            var rgb = [UInt8](repeating: 0, count: bucket.width * bucket.height * 3)
            for y in 0..<bucket.height {
                let src = ((y0 + y) * w + x0) * 3
                rgb.replaceSubrange((y * bucket.width * 3)..<((y + 1) * bucket.width * 3), with: f.rgb[src..<(src + bucket.width * 3)])
            }
            return VideoFrame(width: bucket.width, height: bucket.height, rgb: rgb, index: f.index, timestamp: f.timestamp)
        }
    }
}
