// Replies and messages as Markdown: markdown-it (raw HTML off), highlight.js for code
// blocks, and DOMPurify over the result, so nothing a member or the model writes can run
// script in another member's page.
//
// Cost is bounded per entry: only the first MARKDOWN_CHARS of a text go through the
// Markdown parser (the rest is shown as plain text on "Show the rest"), a code block longer
// than HIGHLIGHT_CHARS is not highlighted, a head that makes more than MARKDOWN_TAGS tags is
// shown as plain text (the sanitiser and the layout cost by element), and the HTML of a
// text is cached by its content.
// Review: 32,000-character messages any editor may post (links, e-mail addresses, code
// blocks) cost every member's page 0.5-1.7 s of main thread each, again on every load.
import MarkdownIt from 'markdown-it'
import DOMPurify from 'dompurify'
import hljs from 'highlight.js/lib/core'
import bash from 'highlight.js/lib/languages/bash'
import css from 'highlight.js/lib/languages/css'
import diff from 'highlight.js/lib/languages/diff'
import go from 'highlight.js/lib/languages/go'
import javascript from 'highlight.js/lib/languages/javascript'
import json from 'highlight.js/lib/languages/json'
import python from 'highlight.js/lib/languages/python'
import rust from 'highlight.js/lib/languages/rust'
import sql from 'highlight.js/lib/languages/sql'
import typescript from 'highlight.js/lib/languages/typescript'
import xml from 'highlight.js/lib/languages/xml'
import yaml from 'highlight.js/lib/languages/yaml'

for (const [name, lang] of Object.entries({ bash, css, diff, go, javascript, json, python, rust, sql, typescript, xml, yaml })) {
  hljs.registerLanguage(name, lang)
}
hljs.registerAliases(['sh', 'shell', 'console'], { languageName: 'bash' })
hljs.registerAliases(['js'], { languageName: 'javascript' })
hljs.registerAliases(['ts'], { languageName: 'typescript' })
hljs.registerAliases(['py'], { languageName: 'python' })
hljs.registerAliases(['html'], { languageName: 'xml' })
hljs.registerAliases(['yml'], { languageName: 'yaml' })

/** Characters of a text rendered as Markdown; the rest is plain text, on request. */
export const MARKDOWN_CHARS = 4000
/** Longest code block that is highlighted (a longer one is shown plain). */
export const HIGHLIGHT_CHARS = 2000
/** Most tags the Markdown of one text may make (a table of 300 cells makes ~700). */
export const MARKDOWN_TAGS = 1500
const CACHED_TEXTS = 64

/** The work done, for tests and the curious: characters parsed and highlighted. */
export const markdownWork = { parsedChars: 0, highlightedChars: 0, renders: 0, cacheHits: 0, plainHeads: 0 }

const md = new MarkdownIt({
  html: false, // a member's raw HTML is shown as text
  linkify: true,
  breaks: true,
  highlight (code, lang) {
    if (lang && code.length <= HIGHLIGHT_CHARS && hljs.getLanguage(lang)) {
      markdownWork.highlightedChars += code.length
      try {
        return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value
      } catch { /* shown plain below */ }
    }
    return '' // markdown-it escapes it
  }
})

// Links open in a new tab, without handing it this page.
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank')
    node.setAttribute('rel', 'noopener noreferrer nofollow')
  }
})

/**
 * Sanitised HTML of `text` as Markdown (the whole of it: callers bound its length), or
 * null when it would make more than MARKDOWN_TAGS tags.
 */
export function markdownHtml (text) {
  const source = String(text ?? '')
  markdownWork.parsedChars += source.length
  markdownWork.renders += 1
  const html = md.render(source)
  let tags = 0
  for (let at = html.indexOf('<'); at !== -1; at = html.indexOf('<', at + 1)) { // '<' of a text is escaped
    if (++tags > MARKDOWN_TAGS) { markdownWork.plainHeads += 1; return null }
  }
  return DOMPurify.sanitize(html, {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'img'],
    FORBID_ATTR: ['style']
  })
}

/**
 * Where to cut `text` for Markdown: at most MARKDOWN_CHARS, at the last line break in its
 * last quarter if there is one (a cut inside a line reads worse), never inside a code point.
 */
export function markdownCut (text) {
  if (text.length <= MARKDOWN_CHARS) return text.length
  const newline = text.lastIndexOf('\n', MARKDOWN_CHARS - 1)
  if (newline >= MARKDOWN_CHARS * 0.75) return newline + 1
  const code = text.charCodeAt(MARKDOWN_CHARS - 1)
  return code >= 0xd800 && code <= 0xdbff ? MARKDOWN_CHARS - 1 : MARKDOWN_CHARS
}

const cache = new Map() // source -> sanitised HTML, the newest last
function cachedHtml (source) {
  const html = cache.get(source)
  if (html !== undefined) {
    markdownWork.cacheHits += 1
    cache.delete(source)
    cache.set(source, html)
    return html
  }
  const made = markdownHtml(source)
  cache.set(source, made)
  if (cache.size > CACHED_TEXTS) cache.delete(cache.keys().next().value)
  return made
}

/**
 * Render `text` into `node` (only when it changed: a streaming reply is rendered again as
 * it grows) and give each code block a Copy button. A text longer than MARKDOWN_CHARS shows
 * its head as Markdown and a "Show the rest" button that adds the rest as plain text.
 */
export function renderMarkdown (node, text) {
  if (node.dataset.source === text) return
  node.dataset.source = text
  const cut = markdownCut(text)
  const html = cachedHtml(text.slice(0, cut))
  if (html === null) node.replaceChildren(plainText(text.slice(0, cut)))
  else node.innerHTML = html
  for (const pre of node.querySelectorAll('pre')) {
    const code = pre.querySelector('code')
    const lang = /language-(\S+)/.exec(code?.className || '')?.[1]
    if (lang) pre.dataset.lang = lang
    const button = document.createElement('button')
    button.type = 'button'
    button.className = 'copy-code small secondary'
    button.textContent = 'Copy'
    button.setAttribute('aria-label', `Copy this ${lang ? `${lang} ` : ''}code`)
    button.addEventListener('click', () => copyText((code || pre).textContent, button))
    pre.prepend(button)
  }
  if (cut < text.length) node.append(restOf(text.slice(cut)))
}

/** The rest of a long text: a button that shows it as plain text (linear, nothing parsed). */
function restOf (rest) {
  const more = document.createElement('button')
  more.type = 'button'
  more.className = 'show-rest small secondary'
  more.textContent = `Show the rest (${rest.length.toLocaleString()} more characters, as plain text)`
  more.addEventListener('click', () => more.replaceWith(plainText(rest)))
  return more
}

function plainText (text) {
  const plain = document.createElement('div')
  plain.className = 'rest-plain'
  plain.textContent = text
  return plain
}

/** Copy to the clipboard and say so on `button` for a moment. */
export async function copyText (text, button) {
  try {
    await navigator.clipboard.writeText(text)
    flash(button, 'Copied')
  } catch {
    flash(button, 'Copy failed')
  }
}

function flash (button, label) {
  const before = button.dataset.label || button.textContent
  button.dataset.label = before
  button.textContent = label
  button.dataset.copied = label === 'Copied' ? 'yes' : 'no'
  setTimeout(() => { button.textContent = before }, 1500)
}
