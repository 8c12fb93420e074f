import Foundation
import HVModel
import HVTrain
import Yams

/// A model family for scaling sweeps (configs/scaling/*-family.yaml):
///
/// ```yaml
/// version: 1
/// name: local
/// base: base-local.yaml            # run config every member starts from (relative to this file)
/// rule: "width 16·k, heads k, ..."  # the shape rule, for the reader and the report
/// target: ../models/x.yaml          # optional: the model the family extrapolates to (planned, never swept)
/// members:
///   - name: L0
///     model: {hidden_size: 16, heads_num: 1, mm_double_blocks_depth: 1, mm_single_blocks_depth: 2}
///     train: {lr: 0.003}            # optional overrides of the base's train section
/// ```
/// A member's `model` (and `train`) keys overlay the base run config's; every other section
/// (data, flow, text encoder) is the base's, so all members see the same samples.
public struct ScalingFamily: Sendable {
    public struct Member: Sendable {
        public var name: String
        /// The base run config with this member's overrides applied (validated).
        public var run: RunConfig
        public var params: Int { run.model.parameterCount }
    }

    public var path: String
    public var name: String
    public var rule: String
    public var basePath: String
    public var base: RunConfig
    public var members: [Member]
    public var target: (name: String, model: DiTConfig)?

    public init(path: String, name: String, rule: String, basePath: String, base: RunConfig, members: [Member],
                target: (name: String, model: DiTConfig)? = nil) {
        self.path = path; self.name = name; self.rule = rule; self.basePath = basePath; self.base = base
        self.members = members; self.target = target
    }

    /// Members sorted by parameter count.
    public var bySize: [Member] { members.sorted { $0.params < $1.params } }

    public static func load(path: String) throws -> ScalingFamily {
        func fail(_ field: String, _ m: String) -> ScalingError { .family(file: path, field: field, message: m) }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ScalingError.unreadable(file: path, reason: error.localizedDescription)
        }
        let yaml: Any?
        do { yaml = try Yams.load(yaml: text) } catch { throw fail("", "not valid YAML: \(error)") }
        guard let dict = yaml as? [String: Any] else { throw fail("", "top level must be a mapping") }
        let known: Set<String> = ["version", "name", "base", "rule", "description", "target", "members"]
        if let bad = dict.keys.first(where: { !known.contains($0) }) {
            throw fail(bad, "unknown key (known: \(known.sorted().joined(separator: ", ")))")
        }
        if let v = dict["version"] as? Int, v != 1 { throw fail("version", "unsupported version \(v) (this hv reads 1)") }
        let dir = (path as NSString).deletingLastPathComponent
        func resolve(_ p: String) -> String {
            if p.hasPrefix("/") { return p }
            let rel = (dir as NSString).appendingPathComponent(p)
            return FileManager.default.fileExists(atPath: rel) || !FileManager.default.fileExists(atPath: p) ? rel : p
        }
        guard let baseRel = dict["base"] as? String else { throw fail("base", "missing: a run config path every member starts from") }
        let basePath = resolve(baseRel)
        let base = try RunConfig.load(path: basePath)
        guard let list = dict["members"] as? [[String: Any]], !list.isEmpty else { throw fail("members", "needs a non-empty list of {name, model}") }

        let enc = JSONEncoder()
        let baseDict = try JSONSerialization.jsonObject(with: try enc.encode(base)) as! [String: Any]
        let modelKeys = Set((baseDict["model"] as! [String: Any]).keys)
        let trainKeys = Set((baseDict["train"] as! [String: Any]).keys)
        var members: [Member] = []
        for (i, m) in list.enumerated() {
            let field = "members.\(i)"
            guard let name = m["name"] as? String, !name.isEmpty else { throw fail("\(field).name", "missing") }
            guard name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                throw fail("\(field).name", "'\(name)' may only hold letters, digits, '-', '_' and '.' (it names run directories)")
            }
            if members.contains(where: { $0.name == name }) { throw fail("\(field).name", "'\(name)' appears twice") }
            if let bad = m.keys.first(where: { !["name", "model", "train"].contains($0) }) {
                throw fail("\(field).\(bad)", "unknown key (known: name, model, train)")
            }
            var d = baseDict
            for (section, keys) in [("model", modelKeys), ("train", trainKeys)] {
                guard let over = m[section] else { continue }
                guard let o = over as? [String: Any] else { throw fail("\(field).\(section)", "must be a mapping") }
                var s = d[section] as! [String: Any]
                for (k, v) in o {
                    guard keys.contains(k) else { throw fail("\(field).\(section).\(k)", "unknown key (known: \(keys.sorted().joined(separator: ", ")))") }
                    s[k] = v
                }
                d[section] = s
            }
            let run: RunConfig
            do {
                run = try JSONDecoder().decode(RunConfig.self, from: try JSONSerialization.data(withJSONObject: d))
            } catch { throw fail(field, "cannot build the run config: \(error)") }
            do { try run.validate(file: path) } catch { throw fail(field, "member '\(name)': \(error)") }
            members.append(Member(name: name, run: run))
        }
        var target: (String, DiTConfig)? = nil
        if let t = dict["target"] as? String {
            let p = resolve(t)
            target = (((p as NSString).lastPathComponent as NSString).deletingPathExtension, try loadModelConfig(path: p))
        }
        return ScalingFamily(path: path, name: dict["name"] as? String ?? ((path as NSString).lastPathComponent as NSString).deletingPathExtension,
                             rule: dict["rule"] as? String ?? "", basePath: basePath, base: base, members: members, target: target)
    }
}

/// Errors of the scaling tools; the text says what went wrong and what to do.
public enum ScalingError: Error, CustomStringConvertible {
    case unreadable(file: String, reason: String)
    case family(file: String, field: String, message: String)
    case results(file: String, message: String)
    case invalidArgument(String)
    case launchFailed(run: String, status: Int32, log: String)
    case interrupted(String)
    case fitFailed(String)

    public var description: String {
        switch self {
        case .unreadable(let f, let r): "cannot read \(f): \(r)"
        case .family(let f, let field, let m): field.isEmpty ? "\(f): \(m)" : "\(f): field '\(field)': \(m)"
        case .results(let f, let m): "\(f): \(m)"
        case .invalidArgument(let m): m
        case .launchFailed(let r, let s, let log):
            "run \(r): hv-coord launch exited with status \(s) (see \(log)); rerun the sweep to resume it"
        case .interrupted(let m): m
        case .fitFailed(let m): m
        }
    }
}
