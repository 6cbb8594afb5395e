// Syntax check of LogQL queries with @grafana/lezer-logql, the LogQL grammar of Grafana's query editor.
// Reads a JSON list of queries on stdin; prints a JSON object: query -> offsets of syntax errors ([] if
// none). The parser recovers from errors, marking them as error nodes, so every error is reported.
import { parser } from "@grafana/lezer-logql";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const result = {};
for (const query of JSON.parse(input)) {
  const errors = [];
  parser.parse(query).iterate({
    enter(node) {
      if (node.type.isError) errors.push(node.from);
    },
  });
  result[query] = errors;
}
console.log(JSON.stringify(result));
