// A worker that parses the scalar API's answers off the page's thread
// (series-parse.js): the page hands it the answer's bytes and gets the
// series back as transferred Float64Arrays, so the JSON of several charts
// is parsed in parallel and the page stays responsive while it is.

import { parseSeries } from "./series-parse.js";

self.onmessage = ({ data }) => {
  const { id, bytes, x } = data;
  try {
    const { series, transfer } = parseSeries(bytes, x);
    self.postMessage({ id, series }, transfer);
  } catch (error) {
    self.postMessage({ id, error: `cannot read the scalar API's answer: ${error.message}` });
  }
};
