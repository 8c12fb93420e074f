import Foundation
import HVModel
import HVTrain

/// One training run of an IsoFLOP grid: `member` trained on `samples` = steps x batch samples,
/// so that steps x batch x FLOPs-per-sample ≈ `budget`.
public struct PlannedRun: Sendable {
    public var name: String
    public var member: String
    public var budget: Double
    public var params: Int
    public var steps: Int
    public var batch: Int
    public var cost: SampleCost
    /// The run config the sweep writes for this run (member config, steps, warm-up, checkpoints).
    public var run: RunConfig

    public var samples: Int { steps * batch }
    /// The compute actually spent (steps are whole, so it differs from the budget by < 1 step).
    public var flops: Double { Double(samples) * cost.flops }
    public var tokens: Double { Double(samples) * cost.tokens }
}

/// The IsoFLOP grid: for every budget C, each member (or the K nearest a prior optimum) trained
/// for C / (FLOPs per sample) samples.
public struct IsoFLOPPlan: Sendable {
    public var budgets: [Double]
    public var runs: [PlannedRun]
    /// (member, budget, why) for grid cells left out.
    public var skipped: [(member: String, budget: Double, reason: String)]
}

public enum IsoFLOPPlanner {
    /// `budgets` in FLOPs. `sizesPerBudget`: keep only the K members whose tokens-per-parameter
    /// ratio D/N is nearest `tokensPerParam` (a prior for the optimum: Chinchilla's ~20 for
    /// LLMs); nil keeps every member. Members that would train for fewer than `minSteps` steps
    /// are skipped. `checkpointEvery`: nil = the base config's value, or steps/4 (at least 50).
    public static func plan(family: ScalingFamily, budgets: [Double], sizesPerBudget: Int? = nil, tokensPerParam: Double = 20,
                            minSteps: Int = 1, checkpointEvery: Int? = nil) throws -> IsoFLOPPlan {
        guard !budgets.isEmpty, budgets.allSatisfy({ $0 > 0 && $0.isFinite }) else {
            throw ScalingError.invalidArgument("budgets must be positive FLOP counts, got \(budgets)")
        }
        if let k = sizesPerBudget, k < 1 { throw ScalingError.invalidArgument("--sizes-per-budget must be >= 1") }
        var runs: [PlannedRun] = []
        var skipped: [(String, Double, String)] = []
        for C in budgets.sorted() {
            var cells: [PlannedRun] = []
            for m in family.bySize {
                let cost = SampleCost(run: m.run)
                let batch = m.run.train.batch_size
                let exactSteps = (C / cost.flops / Double(batch)).rounded()
                guard exactSteps < 1e12 else {
                    throw ScalingError.invalidArgument("budget \(C) FLOPs gives \(exactSteps) steps for \(m.name) at batch \(batch): too large a budget")
                }
                let steps = Int(exactSteps)
                if steps < max(1, minSteps) {
                    skipped.append((m.name, C, String(format: "%d steps < %d at batch %d (%.3g FLOPs/sample)", steps, max(1, minSteps), batch, cost.flops)))
                    continue
                }
                var run = m.run
                run.train.steps = steps
                run.train.warmup_steps = min(run.train.warmup_steps, steps / 10)
                run.checkpoint.every = checkpointEvery ?? (run.checkpoint.every > 0 ? run.checkpoint.every : max(50, steps / 4))
                cells.append(PlannedRun(name: "\(m.name)-C\(budgetLabel(C))", member: m.name, budget: C, params: m.params, steps: steps,
                                        batch: batch, cost: cost, run: run))
            }
            if let k = sizesPerBudget, cells.count > k {
                let ranked = cells.sorted { abs(log($0.tokens / Double($0.params) / tokensPerParam)) < abs(log($1.tokens / Double($1.params) / tokensPerParam)) }
                let keep = Set(ranked.prefix(k).map(\.name))
                for c in cells where !keep.contains(c.name) {
                    skipped.append((c.member, C, String(format: "D/N = %.3g, farther from %.3g than the %d kept", c.tokens / Double(c.params), tokensPerParam, k)))
                }
                cells = cells.filter { keep.contains($0.name) }
            }
            runs += cells
        }
        return IsoFLOPPlan(budgets: budgets.sorted(), runs: runs, skipped: skipped)
    }

    /// "1e12", "3e12", "2.5e13": a budget as it appears in run names.
    public static func budgetLabel(_ c: Double) -> String {
        var s = String(format: "%.3g", c)
        s = s.replacingOccurrences(of: "e+0", with: "e").replacingOccurrences(of: "e+", with: "e")
        return s
    }
}

/// Parses "1e12,3e12" (also "1e12 3e12") into FLOP budgets.
public func parseBudgets(_ s: String) throws -> [Double] {
    let parts = s.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
    let values = parts.compactMap(Double.init)
    guard !parts.isEmpty, values.count == parts.count, values.allSatisfy({ $0 > 0 }) else {
        throw ScalingError.invalidArgument("--budgets must be a comma-separated list of positive FLOP counts, e.g. 1e12,3e12; got '\(s)'")
    }
    return values
}
