import ArgumentParser
import Foundation
import HVCheckpoint
import HVModel
import HVSampling
import HVTensor
import HVTrain

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Text-to-video sampling from a training checkpoint (the default subcommand).",
        discussion: """
        Examples:
          hv-sample --checkpoint checkpoints/demo --prompt "a red square moving right" --out red.mp4
          hv-sample --checkpoint model.h5 --prompts prompts.txt --out samples/clip.mp4 --steps 30 --shift 7
        --checkpoint takes a consolidated file (hv-ckpt consolidate), a checkpoint directory or a run directory
        (its latest checkpoint; shards are reassembled in memory). Without --vae, latents of the synthetic latent
        world are rendered by their palette colours (8x8 pixels per latent pixel); with --vae they are decoded by
        the causal VAE in tiles (--vae-tile and friends; with the defaults the VAE alone decodes 33x256x256 in
        1.77 GiB, measured by hv-bench vae-decode; the DiT and text encoder add their own memory). Writes OUT (mp4) and OUT with .png (a contact sheet of the frames).
        """)

    @Option(help: "Consolidated .h5, checkpoint directory or run directory.") var checkpoint: String
    @Option(help: "The prompt.") var prompt: String?
    @Option(help: "A file with one prompt per line (outputs OUT-001.mp4, ...).") var prompts: String?
    @Option(help: "Negative prompt for classifier-free guidance.") var negativePrompt = ""
    @Option(help: "Output mp4 path.") var out: String
    @Option(help: "Random seed (same seed, same video).") var seed: UInt64 = 0
    @Option(help: "Sampling steps (default: the run config's sample.steps, 50 unless the run says otherwise).") var steps: Int?
    @Option(help: "Frames (1 + 4k). Default: the training clips' length.") var frames: Int?
    @Option(help: "Height in pixels (multiple of 16). Default: the training size.") var height: Int?
    @Option(help: "Width in pixels (multiple of 16). Default: the training size.") var width: Int?
    @Option(help: "Classifier-free guidance scale (1 = off; > 1 runs two passes per step; default: the run config's sample.guidance).") var guidance: Double?
    @Option(help: "Embedded guidance scale for guidance-distilled models.") var embeddedGuidance = 6.0
    @Option(help: "Time-step shift (larger for fewer steps; default: the run config's sample.shift, 7 unless the run says otherwise).") var shift: Double?
    @Option(help: "VAE weights (hv-coord train-vae --out) to decode latents to pixels.") var vae: String?
    @Option(help: "Frames per second of the mp4.") var fps = 8.0
    @Option(help: "Also write the sampled latents (B, C, T, H, W) as dataset `z` of this HDF5 file (with --prompts: FILE-001.h5, ...).")
    var latents: String?
    @OptionGroup var vaeTiles: VAETileOptions
    @OptionGroup var threads: ThreadOptions
    @OptionGroup var precision: PrecisionOptions

    func run() throws {
        try runOrExit {
            threads.apply()
            try precision.apply()
            try generate(model: try TextToVideo.load(checkpoint), writeFiles: true)
        }
    }

    /// Samples every prompt with `model` (whose DiT may be context parallel: then every rank runs
    /// this in step and only the one with `writeFiles` writes the mp4, contact sheet and latents).
    /// `log` (a worker's log): progress as lines instead of a terminal progress bar.
    func generate(model: TextToVideo, writeFiles: Bool, log: ((String) -> Void)? = nil) throws {
        let list: [String]
        if let prompts {
            let text: String
            do { text = try String(contentsOfFile: prompts, encoding: .utf8) } catch {
                throw ValidationError("--prompts \(prompts): cannot read it as UTF-8 text (\(error.localizedDescription))")
            }
            list = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard !list.isEmpty else { throw ValidationError("\(prompts) has no prompts") }
        } else if let prompt {
            list = [prompt]
        } else { throw ValidationError("give --prompt or --prompts FILE") }
        let run = model.run
        var decoder: CausalVAE? = nil
        if let vae {
            let v = try VAEWeights.load(path: vae)
            let cfg = v.config
            guard cfg.latent_channels == run.model.in_channels else {
                throw ValidationError("--vae has \(cfg.latent_channels) latent channels but the DiT takes \(run.model.in_channels)")
            }
            decoder = v
        }
        let F = frames ?? 1 + 4 * (run.data.frames - 1), H = height ?? run.data.height * 8, W = width ?? run.data.width * 8
        let p = run.model.patch_size
        guard F >= 1, H >= 1, W >= 1, (F - 1) % 4 == 0, H % (8 * p[1]) == 0, W % (8 * p[2]) == 0 else {
            throw ValidationError("size \(F) frames x \(H) x \(W): frames must be 1 + 4k (k >= 0) and height/width positive multiples of \(8 * p[1]) (VAE 8x and patch \(p[1]))")
        }
        var o = run.samplingDefaults
        if let steps { o.steps = steps }
        if let shift { o.shift = shift }
        if let guidance { o.guidance = guidance }
        o.embeddedGuidance = embeddedGuidance; o.seed = seed
        o.latentFrames = 1 + (F - 1) / 4; o.latentHeight = H / 8; o.latentWidth = W / 8
        // Models trained on synthetic latents have one latent frame per video frame.
        if decoder == nil { o.latentFrames = (F - 1) / 4 + 1 }
        for (i, text) in list.enumerated() {
            let path = list.count == 1 ? out : (out as NSString).deletingPathExtension + String(format: "-%03d.mp4", i + 1)
            let t0 = Date()
            let z = try model.sampleLatents(prompt: text, negativePrompt: negativePrompt, options: o) { s, n in
                guard writeFiles else { return }
                if let log {
                    if s == n || s % max(1, n / 5) == 0 { log("sampling step \(s)/\(n)") }
                    return
                }
                let bar = String(repeating: "#", count: s * 30 / n) + String(repeating: ".", count: 30 - s * 30 / n)
                FileHandle.standardError.write(Data("\r[\(bar)] step \(s)/\(n)".utf8))
            }
            guard writeFiles else { continue }
            if log == nil { FileHandle.standardError.write(Data("\n".utf8)) }
            if let latents {
                let file = try H5File(path: list.count == 1 ? latents : (latents as NSString).deletingPathExtension + String(format: "-%03d.h5", i + 1), mode: .create)
                try TensorIO.write(z, to: file, name: "z", checksum: false)
                try file.close()
            }
            let rgb: [[UInt8]]
            let (fw, fh): (Int, Int)
            if let decoder {
                let video = GradMode.withoutGrad {
                    decoder.tiledDecode(z * Float(1 / decoder.config.scaling_factor), tile: vaeTiles.vaeTile, overlap: vaeTiles.vaeOverlap,
                                        temporalTile: vaeTiles.vaeTemporalTile, temporalOverlap: vaeTiles.vaeTemporalOverlap)
                }
                let T = video.shape[2], vh = video.shape[3], vw = video.shape[4]
                rgb = (0..<T).map { t in
                    var img = [UInt8](repeating: 0, count: vh * vw * 3)
                    for c in 0..<3 { for q in 0..<(vh * vw) {
                        let v = (video.pointer[(c * T + t) * vh * vw + q] + 1) / 2
                        img[q * 3 + c] = UInt8(max(0, min(255, (v * 255).rounded())))
                    }}
                    return img
                }
                (fw, fh) = (vw, vh)
            } else {
                rgb = LatentPreview.frames(z, channels: run.model.in_channels)
                (fw, fh) = (o.latentWidth * 8, o.latentHeight * 8)
            }
            let sheet = (path as NSString).deletingPathExtension + ".png"
            try writeVideo(rgb, width: fw, height: fh, fps: fps, mp4: path, contactSheet: sheet)
            stderrLine(String(format: "hv-sample: \"%@\" -> %@ (%d frames, %.2fs per step)", text as NSString, path as NSString, rgb.count,
                              Date().timeIntervalSince(t0) / Double(o.steps)))
        }
    }
}
