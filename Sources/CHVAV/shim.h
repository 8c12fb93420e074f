// Thin shim over FFmpeg 5.1 (libavformat 59) for macros Swift cannot import and for the
// AVFrame data/linesize arrays, which import as 8-tuples.
#ifndef HV_CHVAV_SHIM_H
#define HV_CHVAV_SHIM_H

#include <libavformat/avformat.h>
#include <libavcodec/avcodec.h>
#include <libswscale/swscale.h>
#include <libavutil/avutil.h>
#include <libavutil/error.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libavutil/log.h>
#include <errno.h>

static inline int hv_AVERROR(int e) { return AVERROR(e); }
static inline int hv_AVERROR_EOF(void) { return AVERROR_EOF; }
static inline int hv_AVERROR_EAGAIN(void) { return AVERROR(EAGAIN); }
static inline int hv_AVERROR_INVALIDDATA(void) { return AVERROR_INVALIDDATA; }
static inline int hv_AVERROR_STREAM_NOT_FOUND(void) { return AVERROR_STREAM_NOT_FOUND; }
static inline int hv_AVERROR_DECODER_NOT_FOUND(void) { return AVERROR_DECODER_NOT_FOUND; }
static inline int64_t hv_AV_NOPTS_VALUE(void) { return AV_NOPTS_VALUE; }
static inline AVRational hv_AV_TIME_BASE_Q(void) { return AV_TIME_BASE_Q; }
static inline int hv_AV_TIME_BASE(void) { return AV_TIME_BASE; }
static inline int hv_AV_CODEC_FLAG_GLOBAL_HEADER(void) { return AV_CODEC_FLAG_GLOBAL_HEADER; }
static inline int hv_AVFMT_GLOBALHEADER(void) { return AVFMT_GLOBALHEADER; }
static inline int hv_AV_CODEC_FLAG_BITEXACT(void) { return AV_CODEC_FLAG_BITEXACT; }
static inline int hv_AVFMT_FLAG_BITEXACT(void) { return AVFMT_FLAG_BITEXACT; }
static inline int hv_SWS_BITEXACT_ACCURATE_RND(void) { return SWS_BITEXACT | SWS_ACCURATE_RND; }
static inline int hv_AVFMT_NOFILE(void) { return AVFMT_NOFILE; }
static inline int hv_AVSEEK_FLAG_BACKWARD(void) { return AVSEEK_FLAG_BACKWARD; }
static inline int hv_AVIO_FLAG_WRITE(void) { return AVIO_FLAG_WRITE; }

/// Plane pointer / stride of a frame (AVFrame.data and .linesize are 8-element arrays).
static inline uint8_t *hv_frame_data(AVFrame *frame, int plane) { return frame->data[plane]; }
static inline int hv_frame_linesize(const AVFrame *frame, int plane) { return frame->linesize[plane]; }

/// Converts (and scales) one frame into another; both are allocated with av_frame_get_buffer,
/// so they carry the alignment and padding swscale's SIMD paths expect.
static inline int hv_sws_frame_to_frame(struct SwsContext *ctx, const AVFrame *src, AVFrame *dst) {
    return sws_scale(ctx, (const uint8_t *const *)src->data, src->linesize, 0, src->height,
                     dst->data, dst->linesize);
}

#endif
