// Checks recorded Pinning Service API exchanges against the spec's OpenAPI document.
//
//   node pins-openapi.mjs SPEC.yaml EXCHANGES.json
//
// EXCHANGES.json is an array of
//   {"label", "kind": "response", "method", "path": "/pins" | "/pins/{requestid}", "status", "body"}
//   {"label", "kind": "request", "method", "path", "body"}
// A response is checked against the schema the document gives for its operation and
// status (an exact code, else `4XX`/`5XX`); a response the document gives no body for
// must have none. A request body is checked against the operation's requestBody.
// Prints one JSON line: {"checked": N, "failures": [{"label", "errors"}]}.

import { readFileSync } from 'node:fs'
import YAML from 'yaml'
import Ajv from 'ajv'
import addFormats from 'ajv-formats'

const [specPath, exchangesPath] = process.argv.slice(2)
const spec = YAML.parse(readFileSync(specPath, 'utf8'))
const exchanges = JSON.parse(readFileSync(exchangesPath, 'utf8'))

// OpenAPI 3.0 schemas are JSON Schema plus a few annotations (`example`), which a
// non-strict Ajv ignores; `int32` is OpenAPI's own format.
const ajv = new Ajv({ strict: false, allErrors: true })
addFormats(ajv)
ajv.addFormat('int32', {
  type: 'number',
  validate: (n) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31
})
ajv.addSchema({ $id: 'spec', components: spec.components })

const resolve = (object) => {
  if (object && object.$ref) {
    const path = object.$ref.replace(/^#\//, '').split('/')
    return path.reduce((node, key) => node[key], spec)
  }
  return object
}

const schemaOf = (content) => {
  const json = content && content['application/json']
  if (!json || !json.schema) return null
  const ref = json.schema.$ref
  return ref ? { $ref: `spec${ref}` } : json.schema
}

const failures = []
let checked = 0
for (const exchange of exchanges) {
  const operation = spec.paths[exchange.path]?.[exchange.method.toLowerCase()]
  if (!operation) {
    failures.push({ label: exchange.label, errors: [`no operation ${exchange.method} ${exchange.path} in the document`] })
    continue
  }
  let schema
  if (exchange.kind === 'request') {
    schema = schemaOf(resolve(operation.requestBody)?.content)
  } else {
    const status = String(exchange.status)
    const response = resolve(operation.responses[status] ?? operation.responses[`${status[0]}XX`])
    if (!response) {
      failures.push({ label: exchange.label, errors: [`status ${status} is not a response of ${exchange.method} ${exchange.path}`] })
      continue
    }
    schema = schemaOf(response.content)
    if (!schema) {
      checked++
      if (exchange.body !== null) {
        failures.push({ label: exchange.label, errors: [`status ${status} has no body in the document, but one came`] })
      }
      continue
    }
  }
  checked++
  const validate = ajv.compile(schema)
  if (!validate(exchange.body)) {
    failures.push({
      label: exchange.label,
      errors: validate.errors.map((e) => `${e.instancePath || '/'} ${e.message}`)
    })
  }
}
console.log(JSON.stringify({ checked, failures }))
