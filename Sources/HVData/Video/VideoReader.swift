import CHVAV
import Foundation

/// Decodes the best video stream of any container FFmpeg can open into RGB24 frames.
///
/// Frames come out in presentation order via `nextFrame()`; `seek` jumps to the keyframe before
/// a time and decodes forward to it. Truncated or unreadable files throw `VideoError` naming the
/// file. Owns its FFmpeg contexts and frees them in `close()` / `deinit`. Not thread-safe.
public final class VideoReader {
    public let path: String
    /// Size of the frames returned (the source size unless an output size was asked for).
    public let width: Int
    public let height: Int
    /// Size of the coded pictures.
    public let sourceWidth: Int
    public let sourceHeight: Int
    /// Frames per second (FFmpeg's best guess from the container and codec).
    public let fps: Double
    /// Duration in seconds (0 if unknown).
    public let duration: Double
    /// The container's frame count, or round(duration * fps) if it has none.
    public let frameCountEstimate: Int
    /// Decoder name, e.g. "h264".
    public let codecName: String

    /// Owns the FFmpeg objects; frees whatever was allocated, also when `init` throws halfway.
    private final class Contexts {
        var format: UnsafeMutablePointer<AVFormatContext>?
        var codec: UnsafeMutablePointer<AVCodecContext>?
        var packet: UnsafeMutablePointer<AVPacket>?
        var decoded: UnsafeMutablePointer<AVFrame>?
        var converted: UnsafeMutablePointer<AVFrame>?
        var sws: OpaquePointer?

        func free() {
            sws_freeContext(sws)
            sws = nil
            av_frame_free(&converted)
            av_frame_free(&decoded)
            av_packet_free(&packet)
            avcodec_free_context(&codec)
            avformat_close_input(&format)
        }

        deinit { free() }
    }

    private let contexts = Contexts()
    private let streamIndex: Int32
    private let timeBase: AVRational
    private let startPTS: Int64
    private var draining = false
    private var finished = false
    private var pending: VideoFrame?
    private var decodedCount = 0

    /// Opens `path`. `outputWidth`/`outputHeight` rescale frames (bicubic); `threads` 0 lets
    /// FFmpeg choose.
    public init(path: String, outputWidth: Int? = nil, outputHeight: Int? = nil, threads: Int = 0,
                function: String = #function) throws {
        FFmpegLog.applyDefault()
        self.path = path
        let c = contexts
        try avCall("avformat_open_input", path: path, function: function) { avformat_open_input(&c.format, path, nil, nil) }
        let fmt = c.format!
        let plan = try Self.openDecoder(format: fmt, contexts: c, path: path, threads: threads, function: function)
        let codec = c.codec!
        streamIndex = plan.streamIndex
        let stream = fmt.pointee.streams[Int(plan.streamIndex)]!
        timeBase = stream.pointee.time_base
        startPTS = stream.pointee.start_time == hv_AV_NOPTS_VALUE() ? 0 : stream.pointee.start_time
        sourceWidth = Int(codec.pointee.width)
        sourceHeight = Int(codec.pointee.height)
        width = outputWidth ?? sourceWidth
        height = outputHeight ?? sourceHeight
        guard width > 0, height > 0 else {
            throw VideoError.invalidArgument("frame size \(width)x\(height) is not positive", path: path, function: function)
        }
        let rate = av_guess_frame_rate(fmt, stream, nil)
        fps = rate.num > 0 && rate.den > 0 ? av_q2d(rate) : 0
        if stream.pointee.duration != hv_AV_NOPTS_VALUE() && stream.pointee.duration > 0 {
            duration = Double(stream.pointee.duration) * av_q2d(stream.pointee.time_base)
        } else if fmt.pointee.duration != hv_AV_NOPTS_VALUE() && fmt.pointee.duration > 0 {
            duration = Double(fmt.pointee.duration) / Double(hv_AV_TIME_BASE())
        } else {
            duration = 0
        }
        frameCountEstimate = stream.pointee.nb_frames > 0 ? Int(stream.pointee.nb_frames) : Int((duration * fps).rounded())
        codecName = String(cString: plan.decoder.pointee.name)
        c.packet = try avAlloc("av_packet_alloc", path: path, function: function) { av_packet_alloc() }
        c.decoded = try avAlloc("av_frame_alloc", path: path, function: function) { av_frame_alloc() }
        c.converted = try makeFrame(format: AV_PIX_FMT_RGB24, width: width, height: height, path: path, function: function)
    }

    private static func openDecoder(format: UnsafeMutablePointer<AVFormatContext>, contexts: Contexts, path: String,
                                    threads: Int, function: String) throws(VideoError)
        -> (decoder: UnsafePointer<AVCodec>, streamIndex: Int32)
    {
        try avCall("avformat_find_stream_info", path: path, function: function) { avformat_find_stream_info(format, nil) }
        var decoder: UnsafePointer<AVCodec>? = nil
        let index = av_find_best_stream(format, AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0)
        if index == hv_AVERROR_STREAM_NOT_FOUND() { throw .noVideoStream(path: path, function: function) }
        try avCall("av_find_best_stream", path: path, function: function) { index }
        guard let decoder else { throw .codecNotFound(name: "decoder for stream \(index)", path: path, function: function) }
        let codec = try avAlloc("avcodec_alloc_context3", path: path, function: function) { avcodec_alloc_context3(decoder) }
        contexts.codec = codec
        let stream = format.pointee.streams[Int(index)]!
        try avCall("avcodec_parameters_to_context", path: path, function: function) {
            avcodec_parameters_to_context(codec, stream.pointee.codecpar)
        }
        codec.pointee.thread_count = Int32(threads)
        codec.pointee.pkt_timebase = stream.pointee.time_base
        try avCall("avcodec_open2", path: path, function: function) { avcodec_open2(codec, decoder, nil) }
        return (decoder, index)
    }

    /// Frees all FFmpeg state; later calls throw `.closed`. Idempotent.
    public func close() {
        contexts.free()
        pending = nil
    }

    /// The next frame in presentation order, or nil at the end of the stream.
    public func nextFrame(function: String = #function) throws -> VideoFrame? {
        if let frame = pending {
            pending = nil
            return frame
        }
        guard let codec = contexts.codec, let format = contexts.format, let packet = contexts.packet,
              let decoded = contexts.decoded
        else { throw VideoError.closed(path: path, function: function) }
        while !finished {
            let rc = avcodec_receive_frame(codec, decoded)
            if rc >= 0 {
                defer { av_frame_unref(decoded) }
                return try convert(decoded, function: function)
            }
            if rc == hv_AVERROR_EOF() {
                finished = true
                break
            }
            guard rc == hv_AVERROR_EAGAIN() else {
                try avCall("avcodec_receive_frame (decode)", path: path, function: function) { rc }
                break
            }
            // The decoder wants input.
            if draining {
                finished = true
                break
            }
            let readResult = av_read_frame(format, packet)
            if readResult == hv_AVERROR_EOF() {
                draining = true
                try avCall("avcodec_send_packet (flush)", path: path, function: function) { avcodec_send_packet(codec, nil) }
                continue
            }
            try avCall("av_read_frame (demux)", path: path, function: function) { readResult }
            defer { av_packet_unref(packet) }
            guard packet.pointee.stream_index == streamIndex else { continue }
            try avCall("avcodec_send_packet (decode)", path: path, function: function) { avcodec_send_packet(codec, packet) }
        }
        if decodedCount == 0 { throw VideoError.noFrames(path: path, function: function) }
        return nil
    }

    /// Up to `count` frames, taking every `stride`-th decoded frame (fewer at the end of stream).
    public func readFrames(count: Int, stride: Int = 1, function: String = #function) throws -> [VideoFrame] {
        precondition(stride >= 1, "stride must be >= 1")
        var frames: [VideoFrame] = []
        var skip = 0
        while frames.count < count, let frame = try nextFrame(function: function) {
            if skip == 0 {
                frames.append(frame)
                skip = stride - 1
            } else {
                skip -= 1
            }
        }
        return frames
    }

    /// All remaining frames.
    public func readAllFrames(function: String = #function) throws -> [VideoFrame] {
        try readFrames(count: .max, function: function)
    }

    /// Positions the reader so that `nextFrame()` returns the first frame at or after `seconds`.
    public func seek(toSeconds seconds: Double, function: String = #function) throws {
        guard let codec = contexts.codec, let format = contexts.format else {
            throw VideoError.closed(path: path, function: function)
        }
        let target = startPTS + Int64((seconds / av_q2d(timeBase)).rounded(.down))
        try avCall("av_seek_frame(\(seconds) s)", path: path, function: function) {
            av_seek_frame(format, streamIndex, target, hv_AVSEEK_FLAG_BACKWARD())
        }
        avcodec_flush_buffers(codec)
        pending = nil
        draining = false
        finished = false
        // Decode forward from the keyframe; half a frame of slack absorbs timestamp rounding.
        let slack = fps > 0 ? 0.5 / fps : 0
        while let frame = try nextFrame(function: function) {
            if frame.timestamp + slack >= seconds {
                pending = frame
                return
            }
        }
    }

    /// Positions the reader at frame `index` (by timestamp: index / fps).
    public func seek(toFrame index: Int, function: String = #function) throws {
        guard fps > 0 else {
            throw VideoError.invalidArgument("cannot seek by frame: unknown frame rate", path: path, function: function)
        }
        try seek(toSeconds: Double(index) / fps, function: function)
    }

    private func convert(_ frame: UnsafeMutablePointer<AVFrame>, function: String) throws(VideoError) -> VideoFrame {
        guard let converted = contexts.converted else { throw .closed(path: path, function: function) }
        let sws = sws_getCachedContext(contexts.sws, frame.pointee.width, frame.pointee.height,
                                   AVPixelFormat(rawValue: frame.pointee.format),
                                   Int32(width), Int32(height), AV_PIX_FMT_RGB24, SWS_BICUBIC, nil, nil, nil)
        contexts.sws = sws
        guard sws != nil else {
            throw .invalidArgument("no pixel conversion from format \(frame.pointee.format) to RGB24", path: path,
                                   function: function)
        }
        try avCall("sws_scale", path: path, function: function) { hv_sws_frame_to_frame(sws, frame, converted) }
        var pts = frame.pointee.best_effort_timestamp
        if pts == hv_AV_NOPTS_VALUE() { pts = frame.pointee.pts }
        let seconds: Double
        if pts == hv_AV_NOPTS_VALUE() {
            seconds = fps > 0 ? Double(decodedCount) / fps : 0
        } else {
            seconds = Double(pts - startPTS) * av_q2d(timeBase)
        }
        decodedCount += 1
        let index = fps > 0 ? Int((seconds * fps).rounded()) : decodedCount - 1
        return VideoFrame(width: width, height: height, rgb: packedRGB(from: converted, width: width, height: height),
                          index: index, timestamp: seconds)
    }
}
