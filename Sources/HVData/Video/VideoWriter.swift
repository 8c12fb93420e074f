import CHVAV
import Foundation

/// Encodes RGB24 frames into a video file (H.264 in MP4 by default: libx264, yuv420p).
///
/// Frames get consecutive timestamps at `fps`. `finish()` flushes the encoder's delayed frames
/// and writes the container trailer; until then the file is incomplete. `deinit` finishes a
/// writer that was not finished (errors are then lost, so call `finish()` yourself).
public final class VideoWriter {
    /// Encoder settings.
    public struct Options: Sendable {
        /// x264 constant rate factor: 0 lossless, 18 visually lossless, 23 default, 51 worst.
        public var crf: Int
        /// x264 preset: ultrafast ... medium ... placebo.
        public var preset: String
        /// Encoder name as FFmpeg knows it.
        public var codec: String
        /// Keyframe interval in frames (nil: the encoder's default).
        public var keyframeInterval: Int?
        /// Put the MP4 index first (`movflags +faststart`) so players can start before the end.
        public var fastStart: Bool
        /// Encoder threads (0: FFmpeg chooses).
        public var threads: Int
        /// Extra libx264 settings, `key=value:key=value` as `ffmpeg -x264-params` takes them
        /// (e.g. `asm=0:threads=1`); passed through as the encoder's `x264-params` option.
        public var x264Params: String?
        /// Bit-exact output: AV_CODEC_FLAG_BITEXACT on the encoder, AVFMT_FLAG_BITEXACT on the
        /// muxer (no library version strings in the file) and an exact, SIMD-independent
        /// RGB -> YUV conversion (SWS_BITEXACT | SWS_ACCURATE_RND).
        public var bitExact: Bool

        public init(crf: Int = 23, preset: String = "medium", codec: String = "libx264", keyframeInterval: Int? = nil,
                    fastStart: Bool = false, threads: Int = 0, x264Params: String? = nil, bitExact: Bool = false) {
            self.crf = crf
            self.preset = preset
            self.codec = codec
            self.keyframeInterval = keyframeInterval
            self.fastStart = fastStart
            self.threads = threads
            self.x264Params = x264Params
            self.bitExact = bitExact
        }

        /// Same frames, same bytes — run to run and machine to machine: one encoder thread (no
        /// sliced or lookahead threads, whose scheduling changes decisions), x264's portable C
        /// code instead of the assembly it picks per CPU (`asm=0`: the AVX-512 paths here gave
        /// different bytes), bit-exact muxing and colour conversion. Slower; meant for small
        /// clips such as sampler output.
        public static func deterministic(crf: Int = 23, preset: String = "medium") -> Options {
            Options(crf: crf, preset: preset, threads: 1,
                    x264Params: "threads=1:sliced-threads=0:lookahead-threads=1:asm=0", bitExact: true)
        }
    }

    public let path: String
    public let width: Int
    public let height: Int
    public let fps: Double
    /// Frames appended so far.
    public private(set) var frameCount = 0

    private final class Contexts {
        var format: UnsafeMutablePointer<AVFormatContext>?
        var codec: UnsafeMutablePointer<AVCodecContext>?
        var stream: UnsafeMutablePointer<AVStream>?
        var packet: UnsafeMutablePointer<AVPacket>?
        var rgb: UnsafeMutablePointer<AVFrame>?
        var yuv: UnsafeMutablePointer<AVFrame>?
        var sws: OpaquePointer?
        var fileOpen = false

        func free() {
            sws_freeContext(sws)
            sws = nil
            av_frame_free(&rgb)
            av_frame_free(&yuv)
            av_packet_free(&packet)
            avcodec_free_context(&codec)
            if let format {
                if fileOpen { avio_closep(&format.pointee.pb) }
                avformat_free_context(format)
            }
            format = nil
            stream = nil
            fileOpen = false
        }

        deinit { free() }
    }

    private let contexts = Contexts()
    private var finished = false

    /// Creates `path` (container from the extension, e.g. .mp4) for `width`x`height` frames.
    /// yuv420p needs even sizes.
    public init(path: String, width: Int, height: Int, fps: Double, options: Options = Options(),
                function: String = #function) throws {
        FFmpegLog.applyDefault()
        self.path = path
        self.width = width
        self.height = height
        self.fps = fps
        guard width > 0, height > 0, width % 2 == 0, height % 2 == 0 else {
            throw VideoError.invalidArgument("yuv420p needs a positive even frame size, got \(width)x\(height)",
                                             path: path, function: function)
        }
        guard fps > 0 else { throw VideoError.invalidArgument("fps must be positive", path: path, function: function) }
        let c = contexts
        try avCall("avformat_alloc_output_context2", path: path, function: function) {
            avformat_alloc_output_context2(&c.format, nil, nil, path)
        }
        let format = c.format!
        guard let encoder = avcodec_find_encoder_by_name(options.codec) else {
            throw VideoError.codecNotFound(name: options.codec, path: path, function: function)
        }
        let stream = try avAlloc("avformat_new_stream", path: path, function: function) { avformat_new_stream(format, nil) }
        c.stream = stream
        let codec = try avAlloc("avcodec_alloc_context3", path: path, function: function) { avcodec_alloc_context3(encoder) }
        c.codec = codec
        let rate = av_d2q(fps, 100_000)
        codec.pointee.width = Int32(width)
        codec.pointee.height = Int32(height)
        codec.pointee.pix_fmt = AV_PIX_FMT_YUV420P
        codec.pointee.time_base = av_inv_q(rate)
        codec.pointee.framerate = rate
        codec.pointee.thread_count = Int32(options.threads)
        if let interval = options.keyframeInterval { codec.pointee.gop_size = Int32(interval) }
        if options.bitExact {
            codec.pointee.flags |= hv_AV_CODEC_FLAG_BITEXACT()
            format.pointee.flags |= hv_AVFMT_FLAG_BITEXACT()
        }
        if format.pointee.oformat.pointee.flags & hv_AVFMT_GLOBALHEADER() != 0 {
            codec.pointee.flags |= hv_AV_CODEC_FLAG_GLOBAL_HEADER()
        }
        var codecOptions: OpaquePointer? = nil
        defer { av_dict_free(&codecOptions) }
        av_dict_set(&codecOptions, "crf", String(options.crf), 0)
        av_dict_set(&codecOptions, "preset", options.preset, 0)
        if let params = options.x264Params { av_dict_set(&codecOptions, "x264-params", params, 0) }
        try avCall("avcodec_open2(\(options.codec))", path: path, function: function) {
            avcodec_open2(codec, encoder, &codecOptions)
        }
        // An option the encoder did not take is left in the dictionary: x264-params given to
        // another encoder would otherwise be ignored silently.
        if options.x264Params != nil, av_dict_get(codecOptions, "x264-params", nil, 0) != nil {
            throw VideoError.invalidArgument("encoder \(options.codec) does not take x264-params", path: path, function: function)
        }
        try avCall("avcodec_parameters_from_context", path: path, function: function) {
            avcodec_parameters_from_context(stream.pointee.codecpar, codec)
        }
        stream.pointee.time_base = codec.pointee.time_base
        stream.pointee.avg_frame_rate = rate

        if format.pointee.oformat.pointee.flags & hv_AVFMT_NOFILE() == 0 {
            try avCall("avio_open", path: path, function: function) {
                avio_open(&format.pointee.pb, path, hv_AVIO_FLAG_WRITE())
            }
            c.fileOpen = true
        }
        var formatOptions: OpaquePointer? = nil
        defer { av_dict_free(&formatOptions) }
        if options.fastStart { av_dict_set(&formatOptions, "movflags", "+faststart", 0) }
        try avCall("avformat_write_header", path: path, function: function) {
            avformat_write_header(format, &formatOptions)
        }
        c.packet = try avAlloc("av_packet_alloc", path: path, function: function) { av_packet_alloc() }
        c.rgb = try makeFrame(format: AV_PIX_FMT_RGB24, width: width, height: height, path: path, function: function)
        c.yuv = try makeFrame(format: AV_PIX_FMT_YUV420P, width: width, height: height, path: path, function: function)
        c.sws = sws_getContext(Int32(width), Int32(height), AV_PIX_FMT_RGB24, Int32(width), Int32(height),
                               AV_PIX_FMT_YUV420P, SWS_BICUBIC | (options.bitExact ? hv_SWS_BITEXACT_ACCURATE_RND() : 0), nil, nil, nil)
        guard c.sws != nil else {
            throw VideoError.invalidArgument("no RGB24 to yuv420p conversion", path: path, function: function)
        }
    }

    deinit {
        if !finished { try? finish() }
    }

    /// Appends one frame of packed RGB24 bytes (height * width * 3).
    public func append(rgb: UnsafeRawBufferPointer, function: String = #function) throws {
        guard !finished, let codec = contexts.codec, let rgbFrame = contexts.rgb, let yuv = contexts.yuv else {
            throw VideoError.closed(path: path, function: function)
        }
        guard rgb.count == width * height * 3 else {
            throw VideoError.invalidArgument("frame has \(rgb.count) bytes, expected \(width)x\(height)x3 = \(width * height * 3)",
                                             path: path, function: function)
        }
        // The encoder may still hold references to the last frame's buffers.
        try avCall("av_frame_make_writable", path: path, function: function) { av_frame_make_writable(yuv) }
        copyPackedRGB(rgb, into: rgbFrame, width: width, height: height)
        try avCall("sws_scale", path: path, function: function) { hv_sws_frame_to_frame(contexts.sws, rgbFrame, yuv) }
        yuv.pointee.pts = Int64(frameCount)
        try encode(yuv, codec: codec, function: function)
        frameCount += 1
    }

    /// Appends one frame of packed RGB24 bytes.
    public func append(rgb: [UInt8], function: String = #function) throws {
        try rgb.withUnsafeBytes { try append(rgb: $0, function: function) }
    }

    /// Appends a frame (its size must match the writer's).
    public func append(_ frame: VideoFrame, function: String = #function) throws {
        guard frame.width == width, frame.height == height else {
            throw VideoError.invalidArgument("frame is \(frame.width)x\(frame.height), writer is \(width)x\(height)",
                                             path: path, function: function)
        }
        try append(rgb: frame.rgb, function: function)
    }

    /// Flushes the encoder, writes the trailer and closes the file. Idempotent.
    public func finish(function: String = #function) throws {
        guard !finished else { return }
        finished = true
        defer { contexts.free() }
        guard let codec = contexts.codec, let format = contexts.format else { return }
        try encode(nil, codec: codec, function: function)
        try avCall("av_write_trailer", path: path, function: function) { av_write_trailer(format) }
        if contexts.fileOpen {
            contexts.fileOpen = false
            try avCall("avio_closep", path: path, function: function) { avio_closep(&format.pointee.pb) }
        }
    }

    /// Sends a frame (nil: end of stream) and writes every packet the encoder has ready.
    private func encode(_ frame: UnsafeMutablePointer<AVFrame>?, codec: UnsafeMutablePointer<AVCodecContext>,
                        function: String) throws(VideoError) {
        guard let packet = contexts.packet, let stream = contexts.stream, let format = contexts.format else {
            throw .closed(path: path, function: function)
        }
        try avCall("avcodec_send_frame", path: path, function: function) { avcodec_send_frame(codec, frame) }
        while true {
            let rc = avcodec_receive_packet(codec, packet)
            if rc == hv_AVERROR_EAGAIN() || rc == hv_AVERROR_EOF() { return }
            try avCall("avcodec_receive_packet (encode)", path: path, function: function) { rc }
            av_packet_rescale_ts(packet, codec.pointee.time_base, stream.pointee.time_base)
            packet.pointee.stream_index = stream.pointee.index
            // Takes ownership of the packet's data and resets it.
            try avCall("av_interleaved_write_frame", path: path, function: function) {
                av_interleaved_write_frame(format, packet)
            }
        }
    }
}

/// Writes single RGB24 images as PNG through libavcodec's PNG encoder.
public enum PNGWriter {
    /// PNG bytes of a packed RGB24 image.
    public static func encode(rgb: [UInt8], width: Int, height: Int, function: String = #function) throws -> Data {
        FFmpegLog.applyDefault()
        let label = "<png \(width)x\(height)>"
        guard width > 0, height > 0, rgb.count == width * height * 3 else {
            throw VideoError.invalidArgument("\(rgb.count) bytes is not a \(width)x\(height) RGB24 image", path: label,
                                             function: function)
        }
        guard let encoder = avcodec_find_encoder(AV_CODEC_ID_PNG) else {
            throw VideoError.codecNotFound(name: "png", path: label, function: function)
        }
        var codec: UnsafeMutablePointer<AVCodecContext>? = try avAlloc("avcodec_alloc_context3", path: label,
                                                                        function: function) { avcodec_alloc_context3(encoder) }
        defer { avcodec_free_context(&codec) }
        codec!.pointee.width = Int32(width)
        codec!.pointee.height = Int32(height)
        codec!.pointee.pix_fmt = AV_PIX_FMT_RGB24
        codec!.pointee.time_base = AVRational(num: 1, den: 1)
        try avCall("avcodec_open2(png)", path: label, function: function) { avcodec_open2(codec, encoder, nil) }
        var frame: UnsafeMutablePointer<AVFrame>? = try makeFrame(format: AV_PIX_FMT_RGB24, width: width, height: height,
                                                                  path: label, function: function)
        defer { av_frame_free(&frame) }
        rgb.withUnsafeBytes { copyPackedRGB($0, into: frame!, width: width, height: height) }
        frame!.pointee.pts = 0
        var packet: UnsafeMutablePointer<AVPacket>? = try avAlloc("av_packet_alloc", path: label, function: function) {
            av_packet_alloc()
        }
        defer { av_packet_free(&packet) }
        try avCall("avcodec_send_frame", path: label, function: function) { avcodec_send_frame(codec, frame) }
        try avCall("avcodec_send_frame (flush)", path: label, function: function) { avcodec_send_frame(codec, nil) }
        try avCall("avcodec_receive_packet", path: label, function: function) { avcodec_receive_packet(codec, packet) }
        return Data(bytes: packet!.pointee.data, count: Int(packet!.pointee.size))
    }

    /// Writes a packed RGB24 image to `path` as PNG (atomically).
    public static func write(rgb: [UInt8], width: Int, height: Int, to path: String, function: String = #function) throws {
        let data = try encode(rgb: rgb, width: width, height: height, function: function)
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

extension VideoFrame {
    /// Writes this frame to `path` as PNG.
    public func writePNG(to path: String, function: String = #function) throws {
        try PNGWriter.write(rgb: rgb, width: width, height: height, to: path, function: function)
    }
}
