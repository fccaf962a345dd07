// Parse PowerShell sources with the tree-sitter PowerShell grammar and report syntax errors.
//
// Input (stdin): a JSON array of {"name": string, "source": string, "tokens"?: boolean}.
// Output (stdout): a JSON array, one entry per input in order:
//   {"name", "ok", "root", "problems": [{"kind", "row", "column", "text"}], "tokens"?}
// "kind" is "ERROR" (text the grammar could not place) or "MISSING" (a token the parser had
// to invent, e.g. a closing brace); rows and columns are 1-based, as an editor shows them.
// "tokens" (when asked for) lists [type, text] of every leaf of the syntax tree except
// comments: two sources with equal tokens differ only in comments and layout, which is how
// the tests prove that rendering a script changes nothing else.
//
// One process parses every script of a test run (start-up, grammar load included, ~0.1 s).
// Exit code: 0 when the report was written (whatever it says), 2 on bad input or a broken
// installation, so the Python test can tell "script has errors" from "tool is broken".
import { readFileSync } from 'node:fs';
import v8 from 'node:v8';
import { createRequire } from 'node:module';
import { Language, Parser } from 'web-tree-sitter';

const require = createRequire(import.meta.url);

// V8 tiers hot wasm functions up to TurboFan in the background, and the grammar's lexer is one
// huge function: optimising it takes ~5 s of CPU, and node waits for it at exit. Baseline
// (Liftoff) code parses a script in about a millisecond, so never tier up. Set before the wasm
// is compiled (web-tree-sitter compiles on Parser.init / Language.load).
v8.setFlagsFromString('--liftoff-only');

function tokensOf(tree) {
  const tokens = [];
  const cursor = tree.walk();
  // Pre-order walk with a cursor: no recursion, so deep trees cannot overflow the stack.
  for (;;) {
    const node = cursor.currentNode;
    if (node.childCount === 0 && node.type !== 'comment') tokens.push([node.type, node.text]);
    if (cursor.gotoFirstChild()) continue;
    while (!cursor.gotoNextSibling()) {
      if (!cursor.gotoParent()) {
        cursor.delete();
        return tokens;
      }
    }
  }
}

function problemsOf(tree) {
  const problems = [];
  // Depth-first walk over every node, including anonymous ones: MISSING nodes are often
  // anonymous tokens such as "}".
  const stack = [tree.rootNode];
  while (stack.length > 0) {
    const node = stack.pop();
    if (node.isError || node.isMissing) {
      problems.push({
        kind: node.isMissing ? 'MISSING' : 'ERROR',
        row: node.startPosition.row + 1,
        column: node.startPosition.column + 1,
        text: node.isMissing ? node.type : node.text.slice(0, 80),
      });
    }
    // An ERROR node's children are reported through the ERROR itself.
    if (node.hasError && !node.isError) {
      for (let i = node.childCount - 1; i >= 0; i -= 1) stack.push(node.child(i));
    }
  }
  problems.sort((a, b) => a.row - b.row || a.column - b.column);
  return problems;
}

async function main() {
  let inputs;
  try {
    inputs = JSON.parse(readFileSync(0, 'utf8'));
    if (!Array.isArray(inputs)) throw new Error('expected a JSON array');
    for (const item of inputs) {
      if (typeof item?.name !== 'string' || typeof item?.source !== 'string') {
        throw new Error('every item needs string "name" and "source"');
      }
    }
  } catch (err) {
    process.stderr.write(`parse.mjs: bad input: ${err.message}\n`);
    return 2;
  }
  await Parser.init();
  const wasm = require.resolve('tree-sitter-powershell/tree-sitter-powershell.wasm');
  const language = await Language.load(wasm);
  const parser = new Parser();
  parser.setLanguage(language);
  const report = inputs.map(({ name, source, tokens }) => {
    const tree = parser.parse(source);
    const problems = problemsOf(tree);
    const result = {
      name,
      ok: problems.length === 0 && !tree.rootNode.hasError,
      root: tree.rootNode.type,
      problems,
    };
    if (tokens === true) result.tokens = tokensOf(tree);
    tree.delete();
    return result;
  });
  process.stdout.write(JSON.stringify(report));
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`parse.mjs: ${err.stack ?? err}\n`);
    process.exitCode = 2;
  },
);
