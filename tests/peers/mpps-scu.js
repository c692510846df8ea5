#!/usr/bin/env node
// An independent MPPS SCU (dcmjs-dimse): sends the N-CREATE/N-SET requests of a
// JSON script on one association, in order, and prints one JSON line per
// response with its status and every command element of the response.
//
// usage: node mpps-scu.js HOST PORT CALLED_AET CALLING_AET SCRIPT.json
// SCRIPT: [{"op": "create"|"set", "uid": "...", "dataset": {naturalized DICOM JSON}}]
'use strict';

const fs = require('fs');
const dimse = require('dcmjs-dimse');

dimse.log.setLevel(process.env.DCMJS_LOG || 'warn');

const { Client, Dataset } = dimse;
const { NCreateRequest, NSetRequest } = dimse.requests;

const MPPS = '1.2.840.10008.3.1.2.3.3';

const [host, port, calledAet, callingAet, scriptPath] = process.argv.slice(2);
const script = JSON.parse(fs.readFileSync(scriptPath, 'utf8'));

const client = new Client();
const results = new Array(script.length).fill(null);

script.forEach((step, i) => {
  const request = step.op === 'create'
    ? new NCreateRequest(MPPS, step.uid || '')
    : new NSetRequest(MPPS, step.uid);
  request.setDataset(new Dataset(step.dataset));
  request.on('response', (response) => {
    const command = response.getCommandDataset();
    const dataset = response.getDataset();
    results[i] = {
      op: step.op,
      uid: step.uid,
      status: response.getStatus(),
      command: command ? command.getElements() : {},
      dataset: dataset ? dataset.getElements() : null,
    };
  });
  client.addRequest(request);
});

let failed = null;
client.on('networkError', (e) => { failed = `network error: ${e}`; });
client.on('associationRejected', (r) => { failed = `association rejected: ${JSON.stringify(r)}`; });
client.on('closed', () => {
  for (const r of results) {
    process.stdout.write(JSON.stringify(r) + '\n');
  }
  if (failed) {
    process.stderr.write(failed + '\n');
    process.exit(2);
  }
  process.exit(0);
});
client.send(host, Number(port), callingAet, calledAet, { associationTimeout: 30000,
  pduTimeout: 30000 });
