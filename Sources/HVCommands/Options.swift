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
    @Option(help: "OpenBLAS threads (default: all cores).") var threads: Int?

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
