import ArgumentParser
import Foundation
import HVTensor

/// Writes a line to standard error (progress and diagnostics; stdout stays for results).
func stderrLine(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

/// Writes a line to standard output immediately (progress lines must not sit in a buffer when
/// stdout is a file or pipe).
func outLine(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }

/// Maps library errors to a clean message and exit code (libraries never exit themselves).
func runOrExit(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch let e as CleanExit { throw e } catch {
        stderrLine("error: \(error)")
        throw ExitCode(1)
    }
}

struct ThreadOptions: ParsableArguments {
    @Option(help: "Threads for OpenBLAS, attention and elementwise work (default: all cores).") var threads: Int?

    func validate() throws {
        if let threads, !(1...1024).contains(threads) { throw ValidationError("--threads must be in 1...1024, got \(threads)") }
    }

    func apply() {
        if let threads {
            BLAS.threads = threads
            FlashAttention.threads = threads
        }
    }
}

extension MatmulPrecision: ExpressibleByArgument {}

/// `--precision` of the sampling commands (training takes the run config's `train.precision`).
struct PrecisionOptions: ParsableArguments {
    @Option(help: "Matmul precision: fp32, or bf16 (bf16 operands with fp32 sums; about 1.5x faster on CPUs with AVX512-BF16, results differ from fp32 by bf16 rounding).")
    var precision: MatmulPrecision = .fp32

    func apply() throws { try MatmulPrecision.select(precision) }
}

/// Tiles of a VAE decode. The defaults are what fits a 33 x 256 x 256 decode of the full
/// HunyuanVideo VAE in 4 GiB (BENCHMARKS.md, "Tiled decode memory"): 144 px tiles (2 x 2 per
/// 256 px frame) of 13 frames. The official tiles (256 px, 65 frames) decode that clip in one
/// piece, well over 7 GiB in fp32; the overlaps cost about 1.8x the compute of one piece.
struct VAETileOptions: ParsableArguments {
    @Option(help: "VAE decode: spatial tile in latent pixels (x 8 video pixels).") var vaeTile = 18
    @Option(help: "VAE decode: spatial tile overlap in latent pixels.") var vaeOverlap = 4
    @Option(help: "VAE decode: temporal tile in latent frames (a tile decodes 1 + 4 x this video frames).") var vaeTemporalTile = 3
    @Option(help: "VAE decode: temporal tile overlap in latent frames.") var vaeTemporalOverlap = 1

    func validate() throws {
        guard vaeTile > 0, vaeOverlap > 0, vaeOverlap < vaeTile else {
            throw ValidationError("--vae-overlap (\(vaeOverlap)) must be in 1..<--vae-tile (\(vaeTile))")
        }
        guard vaeTemporalTile > 0, vaeTemporalOverlap >= 0, vaeTemporalOverlap < vaeTemporalTile else {
            throw ValidationError("--vae-temporal-overlap (\(vaeTemporalOverlap)) must be in 0..<--vae-temporal-tile (\(vaeTemporalTile))")
        }
    }
}
