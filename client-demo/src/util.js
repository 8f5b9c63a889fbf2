// Small DOM helpers shared by the demo's panels.

/** Build an element: attributes (`on*` functions become listeners), then children. */
export function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue
    if (typeof v === 'function' && k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else node.setAttribute(k, v === true ? '' : v)
  }
  for (const child of children) if (child !== '' && child != null) node.append(child)
  return node
}

export const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

export function setText (node, value) {
  if (node.textContent !== value) node.textContent = value
}

/**
 * The start of `s`: at most `n` code points (what the server counts), cut between
 * graphemes where the browser can tell them, never inside a surrogate pair (review: a
 * title cut at 80 UTF-16 units split an emoji and the server refused it).
 */
let graphemes = null // one Intl.Segmenter, made on first use

export function cutText (s, n) {
  let end = 0
  let points = 0
  for (const point of s) {
    if (points === n) break
    end += point.length
    points += 1
  }
  if (end === s.length || typeof Intl.Segmenter !== 'function') return s.slice(0, end)
  graphemes ??= new Intl.Segmenter(undefined, { granularity: 'grapheme' })
  let whole = 0 // the end of the last grapheme that fits
  for (const { index, segment } of graphemes.segment(s)) {
    if (index + segment.length > end) break
    whole = index + segment.length
  }
  return s.slice(0, whole > 0 ? whole : end)
}

/** `s`, or its start and "…" when it has more than `n` code points. */
export function truncate (s, n) {
  const head = cutText(s, n)
  return head.length < s.length ? `${cutText(head, n - 1)}…` : s
}

export function colorFor (name) {
  let h = 0
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) % 360
  return `hsl(${h} 55% 38%)` // dark enough for white initials (contrast ≥ 4.5)
}

/** Up to two initials of a display name ("Alice Martin" → "AM", "bob" → "B"). */
export function initials (name) {
  const words = String(name).trim().split(/[\s._@-]+/).filter(Boolean)
  const letters = words.slice(0, 2).map((w) => [...w][0].toUpperCase())
  return letters.join('') || '?'
}

/**
 * Keyed list rendering: one node per key, kept across renders (so a button under the mouse
 * survives an update), created by `make`, refreshed by `fill`, in `items`' order.
 */
export function renderKeyed (list, cache, items, keyOf, make, fill) {
  const seen = new Set()
  let prev = null
  for (const item of items) {
    const key = keyOf(item)
    seen.add(key)
    let node = cache.get(key)
    if (!node) {
      node = make(item)
      cache.set(key, node)
    }
    fill(node, item)
    const want = prev ? prev.nextSibling : list.firstChild
    if (want !== node) list.insertBefore(node, want)
    prev = node
  }
  for (const [key, node] of cache) {
    if (!seen.has(key)) { node.remove(); cache.delete(key) }
  }
}
