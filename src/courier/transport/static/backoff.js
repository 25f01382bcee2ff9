// Retry delays: exponential growth with "full jitter". A server restart cuts every page off
// in the same instant; each one then waits a delay drawn uniformly from [0, ceiling], the
// ceiling doubling from baseMs with every failed try up to capMs, so the pages that come back
// spread evenly over the whole window instead of arriving together.

/** The longest wait before retry number `attempt` (0 for the first retry). */
export function backoffCeiling(attempt, baseMs, capMs) {
  return Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 30));
}

/** Milliseconds to wait before retry number `attempt`; `random` returns [0, 1). */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  return Math.round(random() * backoffCeiling(attempt, baseMs, capMs));
}
