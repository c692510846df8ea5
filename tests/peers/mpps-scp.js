#!/usr/bin/env node
// An independent MPPS SCP (dcmjs-dimse) standing in for an order filler or a
// report manager.  It keeps the procedure steps it was told about and answers
// like a real one: a second N-CREATE of a UID gets 0111, an N-SET of an
// unknown UID 0112, an N-SET after COMPLETED/DISCONTINUED 0110.  Every request
// is appended, as one JSON line, to LOG before the response is sent.
//
// usage: node mpps-scp.js PORT AET LOG [--fail-create STATUS] [--delay-ms N]
'use strict';

const fs = require('fs');
const dimse = require('dcmjs-dimse');

dimse.log.setLevel(process.env.DCMJS_LOG || 'warn');

const { Server, Scp } = dimse;
const { NCreateResponse, NSetResponse, CEchoResponse } = dimse.responses;
const { Status, PresentationContextResult, RejectResult, RejectSource, RejectReason } =
  dimse.constants;

const MPPS = '1.2.840.10008.3.1.2.3.3';
const VERIFICATION = '1.2.840.10008.1.1';
const UNCOMPRESSED = ['1.2.840.10008.1.2', '1.2.840.10008.1.2.1'];

const args = process.argv.slice(2);
const [port, aet, logPath] = args;
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const failCreate = option('--fail-create') ? parseInt(option('--fail-create'), 16) : 0;
const delayMs = Number(option('--delay-ms') || 0);

const steps = new Map();
let counter = 0;

function log(entry) {
  fs.appendFileSync(logPath, JSON.stringify(entry) + '\n');
}

function later(fn) {
  if (delayMs > 0) {
    setTimeout(fn, delayMs);
  } else {
    fn();
  }
}

class MppsScp extends Scp {
  associationRequested(association) {
    if (association.getCalledAeTitle() !== aet) {
      this.sendAssociationReject(RejectResult.Permanent, RejectSource.ServiceUser,
        RejectReason.CalledAeNotRecognized);
      return;
    }
    association.getPresentationContexts().forEach((c) => {
      const context = association.getPresentationContext(c.id);
      const abstract = context.getAbstractSyntaxUid();
      if (abstract !== MPPS && abstract !== VERIFICATION) {
        context.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
        return;
      }
      const ts = context.getTransferSyntaxUids().find((t) => UNCOMPRESSED.includes(t));
      if (ts) {
        context.setResult(PresentationContextResult.Accept, ts);
      } else {
        context.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
      }
    });
    this.sendAssociationAccept();
  }

  cEchoRequest(request, callback) {
    const response = CEchoResponse.fromRequest(request);
    response.setStatus(Status.Success);
    callback(response);
  }

  nCreateRequest(request, callback) {
    const uid = request.getAffectedSopInstanceUid();
    const dataset = request.getDataset();
    const elements = dataset ? dataset.getElements() : {};
    let status = Status.Success;
    if (failCreate) {
      status = failCreate;
    } else if (steps.has(uid)) {
      status = 0x0111;
    } else {
      steps.set(uid, elements.PerformedProcedureStepStatus || '');
    }
    log({ n: counter++, op: 'N-CREATE', uid, status, calling: this.association.getCallingAeTitle(),
      dataset: elements });
    later(() => {
      const response = NCreateResponse.fromRequest(request);
      response.setStatus(status);
      callback(response);
    });
  }

  nSetRequest(request, callback) {
    const uid = request.getRequestedSopInstanceUid();
    const dataset = request.getDataset();
    const elements = dataset ? dataset.getElements() : {};
    let status = Status.Success;
    if (!steps.has(uid)) {
      status = 0x0112;
    } else if (['COMPLETED', 'DISCONTINUED'].includes(steps.get(uid))) {
      status = 0x0110;
    } else if (elements.PerformedProcedureStepStatus) {
      steps.set(uid, elements.PerformedProcedureStepStatus);
    }
    log({ n: counter++, op: 'N-SET', uid, status, calling: this.association.getCallingAeTitle(),
      dataset: elements });
    later(() => {
      const response = NSetResponse.fromRequest(request);
      response.setStatus(status);
      callback(response);
    });
  }

  associationReleaseRequested() {
    this.sendAssociationReleaseResponse();
  }
}

const server = new Server(MppsScp);
server.on('networkError', (e) => process.stderr.write(`network error: ${e}\n`));
server.listen(Number(port));
process.stdout.write(`listening on ${port}\n`);
process.on('SIGTERM', () => {
  server.close();
  process.exit(0);
});
