// Replies and messages as Markdown: markdown-it (raw HTML off), highlight.js for code
// blocks, and DOMPurify over the result, so nothing a member or the model writes can run
// script in another member's page.
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

const md = new MarkdownIt({
  html: false, // a member's raw HTML is shown as text
  linkify: true,
  breaks: true,
  highlight (code, lang) {
    if (lang && hljs.getLanguage(lang)) {
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

/** Sanitised HTML of `text` as Markdown. */
export function markdownHtml (text) {
  return DOMPurify.sanitize(md.render(String(text ?? '')), {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'img'],
    FORBID_ATTR: ['style']
  })
}

/**
 * Render `text` into `node` (only when it changed: a streaming reply is rendered again as
 * it grows) and give each code block a Copy button.
 */
export function renderMarkdown (node, text) {
  if (node.dataset.source === text) return
  node.dataset.source = text
  node.innerHTML = markdownHtml(text)
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
