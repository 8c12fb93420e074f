/// Whether ops record graph history. Compute in one thread per process (hv workers are
/// single-threaded at the op level), so a process-wide flag suffices.
public enum GradMode {
    nonisolated(unsafe) public private(set) static var isEnabled = true

    /// Runs `body` without recording history (sampling, optimizer steps, evaluation).
    @discardableResult
    public static func withoutGrad<R>(_ body: () throws -> R) rethrows -> R {
        let old = isEnabled
        isEnabled = false
        defer { isEnabled = old }
        return try body()
    }

    @discardableResult
    public static func withGrad<R>(_ body: () throws -> R) rethrows -> R {
        let old = isEnabled
        isEnabled = true
        defer { isEnabled = old }
        return try body()
    }
}

/// One recorded op: its inputs and the rule mapping the output gradient to input gradients
/// (nil for an input that needs none). Rules run with grad recording off.
public final class GradNode {
    public let name: String
    let inputs: [Tensor]
    let backward: (Tensor) -> [Tensor?]
    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
    }
}

extension Tensor {
    /// Attaches `backward` to `out` when recording is on and any input requires grad.
    @inline(__always)
    static func record(_ name: String, _ out: Tensor, _ inputs: [Tensor], _ backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        guard GradMode.isEnabled, inputs.contains(where: { $0.requiresGrad }) else { return out }
        out.requiresGrad = true
        out.gradNode = GradNode(name: name, inputs: inputs, backward: backward)
        return out
    }

    /// Records a custom op defined outside HVTensor (e.g. distributed ring attention): `out`
    /// gets `backward`, mapping its gradient to one gradient (or nil) per input, when recording
    /// is on and an input requires grad. The rule runs with recording off.
    public static func recordCustom(_ name: String, output out: Tensor, inputs: [Tensor],
                                    backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        record(name, out, inputs, backward)
    }

    public var isLeaf: Bool { gradNode == nil }

    /// Reverse-mode sweep from this tensor. `gradient` defaults to ones (a scalar loss).
    /// Leaf tensors that require grad accumulate into `.grad`.
    public func backward(_ gradient: Tensor? = nil) {
        let seed = gradient ?? Tensor(repeating: 1, shape: shape)
        precondition(seed.shape == shape, "backward: gradient shape \(seed.shape) != \(shape)")
        guard requiresGrad else { return }
        // Reverse topological order via iterative DFS.
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (t, expanded) = stack.popLast() {
            if expanded { order.append(t); continue }
            if visited.contains(ObjectIdentifier(t)) { continue }
            visited.insert(ObjectIdentifier(t))
            stack.append((t, true))
            if let node = t.gradNode {
                for input in node.inputs where input.requiresGrad && !visited.contains(ObjectIdentifier(input)) {
                    stack.append((input, false))
                }
            }
        }
        var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
        GradMode.withoutGrad {
            for t in order.reversed() {
                guard let g = grads.removeValue(forKey: ObjectIdentifier(t)) else { continue }
                guard let node = t.gradNode else {
                    t.accumulateGrad(g)
                    continue
                }
                let inputGrads = node.backward(g)
                // Backward rules capture their op's output (e.g. y for exp), and the output owns
                // its node: drop the node once used so the step's graph is freed (no retain_graph).
                t.gradNode = nil
                precondition(inputGrads.count == node.inputs.count, "\(node.name): wrong gradient count")
                for (input, ig) in zip(node.inputs, inputGrads) {
                    guard input.requiresGrad, let ig else { continue }
                    precondition(ig.shape == input.shape, "\(node.name): gradient \(ig.shape) for input \(input.shape)")
                    let key = ObjectIdentifier(input)
                    grads[key] = grads[key].map { $0.adding(ig) } ?? ig
                }
            }
        }
    }

    func accumulateGrad(_ g: Tensor) {
        if let existing = grad {
            existing.addInPlace(g)
        } else {
            grad = g.copy()  // g may alias another tensor's storage
        }
    }

    /// Clears `.grad` (start of a new accumulation window).
    public func zeroGrad() { grad = nil }

    /// Out-of-place sum outside the graph, same shapes.
    func adding(_ other: Tensor) -> Tensor {
        let a = contiguous(), b = other.contiguous()
        let out = Tensor(uninitialized: shape)
        let p = out.pointer, x = a.pointer, y = b.pointer
        for i in 0..<count { p[i] = x[i] + y[i] }
        return out
    }
}

/// Called around the recomputed forward + backward of a `recompute` region (ZeRO-3 gathers the
/// region's parameters before and reduce-scatters their gradients after).
public struct RecomputeHooks {
    public var willBackward: () -> Void
    public var didBackward: () -> Void
    public init(willBackward: @escaping () -> Void, didBackward: @escaping () -> Void) {
        self.willBackward = willBackward
        self.didBackward = didBackward
    }
}

/// Activation recomputation: runs `body` without storing its activations; during backward the
/// forward is run again with recording on and differentiated. Parameters used inside `body`
/// receive their gradients as usual. `body` must be deterministic.
public func recompute(_ inputs: [Tensor], hooks: RecomputeHooks? = nil, _ body: @escaping ([Tensor]) -> Tensor) -> Tensor {
    guard GradMode.isEnabled else { return body(inputs) }
    let out = GradMode.withoutGrad { body(inputs) }
    // The recomputed output may require grad through parameters even when no input does.
    out.requiresGrad = true
    out.gradNode = GradNode(name: "recompute", inputs: inputs) { g in
        let detachedInputs = inputs.map { t -> Tensor in
            let d = t.detached()
            d.requiresGrad = t.requiresGrad
            return d
        }
        hooks?.willBackward()
        GradMode.withGrad {
            let y = body(detachedInputs)
            y.backward(g)
        }
        hooks?.didBackward()
        return detachedInputs.map { $0.grad }
    }
    return out
}
