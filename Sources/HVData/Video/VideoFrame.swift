import CHVAV
import Foundation

/// One decoded (or to-be-encoded) picture as packed RGB24: `rgb[(y * width + x) * 3 + c]`.
public struct VideoFrame: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// height * width * 3 bytes, row-major, channels R, G, B.
    public var rgb: [UInt8]
    /// Frame number derived from the timestamp (round(timestamp * fps)); 0-based.
    public var index: Int
    /// Presentation time in seconds from the start of the stream.
    public var timestamp: Double

    public init(width: Int, height: Int, rgb: [UInt8], index: Int = 0, timestamp: Double = 0) {
        precondition(rgb.count == width * height * 3, "RGB24 frame of \(width)x\(height) needs \(width * height * 3) bytes")
        self.width = width
        self.height = height
        self.rgb = rgb
        self.index = index
        self.timestamp = timestamp
    }

    /// A frame filled with one colour.
    public init(width: Int, height: Int, color: (r: UInt8, g: UInt8, b: UInt8), index: Int = 0) {
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        for p in 0..<(width * height) {
            rgb[3 * p] = color.r
            rgb[3 * p + 1] = color.g
            rgb[3 * p + 2] = color.b
        }
        self.init(width: width, height: height, rgb: rgb, index: index)
    }

    /// The pixel at (x, y).
    public func pixel(x: Int, y: Int) -> (r: UInt8, g: UInt8, b: UInt8) {
        let i = (y * width + x) * 3
        return (rgb[i], rgb[i + 1], rgb[i + 2])
    }

    /// Mean of each channel over a rectangle (the whole frame by default), in 0...255.
    public func meanColor(x: Range<Int>? = nil, y: Range<Int>? = nil) -> (r: Double, g: Double, b: Double) {
        let xs = x ?? 0..<width, ys = y ?? 0..<height
        var sum = (0.0, 0.0, 0.0)
        for row in ys {
            for col in xs {
                let i = (row * width + col) * 3
                sum.0 += Double(rgb[i])
                sum.1 += Double(rgb[i + 1])
                sum.2 += Double(rgb[i + 2])
            }
        }
        let n = Double(max(1, xs.count * ys.count))
        return (sum.0 / n, sum.1 / n, sum.2 / n)
    }
}

// MARK: Frame buffers shared by reader, writer and PNG writer

/// Allocates an AVFrame with its own aligned, padded buffers.
func makeFrame(format: AVPixelFormat, width: Int, height: Int, path: String,
               function: String) throws(VideoError) -> UnsafeMutablePointer<AVFrame> {
    let frame = try avAlloc("av_frame_alloc", path: path, function: function) { av_frame_alloc() }
    frame.pointee.format = format.rawValue
    frame.pointee.width = Int32(width)
    frame.pointee.height = Int32(height)
    do {
        try avCall("av_frame_get_buffer", path: path, function: function) { av_frame_get_buffer(frame, 0) }
    } catch {
        var f: UnsafeMutablePointer<AVFrame>? = frame
        av_frame_free(&f)
        throw error
    }
    return frame
}

/// Copies packed RGB24 rows into an RGB24 AVFrame (whose rows may be padded).
func copyPackedRGB(_ source: UnsafeRawBufferPointer, into frame: UnsafeMutablePointer<AVFrame>, width: Int, height: Int) {
    let stride = Int(hv_frame_linesize(frame, 0))
    let rowBytes = width * 3
    guard let destination = hv_frame_data(frame, 0), let base = source.baseAddress else { return }
    for row in 0..<height {
        (destination + row * stride).update(from: base.advanced(by: row * rowBytes).assumingMemoryBound(to: UInt8.self),
                                            count: rowBytes)
    }
}

/// Copies an RGB24 AVFrame's rows into a packed array.
func packedRGB(from frame: UnsafeMutablePointer<AVFrame>, width: Int, height: Int) -> [UInt8] {
    let stride = Int(hv_frame_linesize(frame, 0))
    let rowBytes = width * 3
    let source = hv_frame_data(frame, 0)!
    return [UInt8](unsafeUninitializedCapacity: rowBytes * height) { buffer, initialized in
        for row in 0..<height {
            (buffer.baseAddress! + row * rowBytes).initialize(from: source + row * stride, count: rowBytes)
        }
        initialized = rowBytes * height
    }
}
