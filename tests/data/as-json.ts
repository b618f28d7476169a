// A type as a JSON file writes it: enums by their values ("absolute", not ThresholdsMode.Absolute),
// everything else as declared, so an object literal of this type gets TypeScript's full check
// (unknown fields, missing required fields, wrong value types) against Grafana's own types.
export type AsJson<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<AsJson<U>>
      : T extends object
        ? { [K in keyof T]: AsJson<T[K]> }
        : T;
