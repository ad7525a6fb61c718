// ZBD's official Node SDK (@zbd/node), unchanged, against payrail: only the base URL differs.
// Run by tests/test_zbd_sdk.py; prints one JSON object: each step's answer, or the error the
// SDK threw ({status, message}), for the Python test to assert with balances.
import { zbd } from "@zbd/node";

const env = process.env;
const ZBD = new zbd(env.ZBD_API_KEY, env.ZBD_BASE_URL); // the one line a studio changes

async function step(fn) {
  try {
    return { ok: true, answer: await fn() };
  } catch (error) {
    return { ok: false, status: error.status ?? null, message: error.message ?? String(error) };
  }
}

const out = {};
out.walletBefore = await step(() => ZBD.getWallet());
out.gamertag = await step(() =>
  ZBD.sendGamertagPayment({ gamertag: "nodeplayer", amount: "2000000", description: "GG from Node" }),
);
if (out.gamertag.ok) {
  const id = out.gamertag.answer.data.transactionId;
  out.gamertagTransaction = await step(() => ZBD.getGamertagTransaction(id));
}
out.invoice = await step(() =>
  ZBD.sendPayment({ invoice: env.INVOICE, description: "Node invoice", internalId: "node-1" }),
);
if (out.invoice.ok) {
  out.payment = await step(() => ZBD.getPayment(out.invoice.answer.data.id));
}
out.lnAddress = await step(() =>
  ZBD.sendLightningAddressPayment({ lnAddress: env.LN_ADDRESS, amount: "3000000", comment: "hi" }),
);
out.decode = await step(() => ZBD.decodeCharge({ invoice: env.INVOICE }));
out.insufficient = await step(() =>
  ZBD.sendGamertagPayment({ gamertag: "whale", amount: "100000000", description: "too much" }),
);
out.fraction = await step(() =>
  ZBD.sendGamertagPayment({ gamertag: "nodeplayer", amount: "1500", description: "1.5 sats" }),
);
out.transferWithoutReceiverKey = await step(() =>
  ZBD.internalTransfer({ amount: "1000000", receiverWalletId: env.RECEIVER }),
);
out.withdrawal = await step(() =>
  ZBD.createWithdrawalRequest({ amount: "1000000", expiresIn: 300, description: "claim" }),
);
out.charge = await step(() =>
  ZBD.createCharge({ amount: "7000000", expiresIn: 300, description: "Node top-up", internalId: "n1" }),
);
if (out.charge.ok) {
  out.chargeFetched = await step(() => ZBD.getCharge(out.charge.answer.data.id));
}
out.walletAfter = await step(() => ZBD.getWallet());
console.log(JSON.stringify(out));
