"""The consoles in Chromium, as people use them: every tier signs in on its own host, adds the
tier below it and that tier's first account, and signs out; on the way the partner installs and
offers a plugin, the agent builds, publishes and assigns a package with it, and the merchant
sees what it holds and makes its Alipay key pair; the cashier at the bottom sees its store and
no form. Every page is checked with axe-core (no serious or critical violation), the
sign-in is done with the keyboard alone, and each tier's main pages are photographed in Chinese
and English.

Run by tests/it/browser.rs against an engine it started; exits non-zero on the first failure.
"""

import argparse
import os
import re
import sys

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect, sync_playwright

PASSWORD = "correct horse battery staple"
# The plugins the partner installs, in the order their archives are given.
PLUGINS = ("com.trellis.hello", "com.trellis.membership")
LANGS = ("zh-CN", "en")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", required=True)
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--root-email", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument(
        "--plugin", action="append", required=True, help="a .tplug archive the partner installs"
    )
    args = parser.parse_args()
    console = f"http://127.0.0.1:{args.port}"
    partner_site = f"http://jade.test:{args.port}"
    axe = Axe()
    checked = []

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium,
            # Partner domains are names only this test knows: send them all to the engine.
            args=["--no-sandbox", "--host-resolver-rules=MAP *.test 127.0.0.1"],
        )

        def visitor():
            return browser.new_context(
                viewport={"width": 1200, "height": 800}, locale="zh-CN"
            ).new_page()

        def accessible(page, what):
            results = axe.run(page)
            bad = [
                v
                for v in results.response["violations"]
                if v["impact"] in ("serious", "critical")
            ]
            if bad:
                for v in bad:
                    nodes = [n["target"] for n in v["nodes"]][:5]
                    print(f"{what}: {v['id']} ({v['impact']}): {v['help']} at {nodes}")
                sys.exit(f"{what}: accessibility violations")
            checked.append(what)

        def photograph(page, name):
            """The page as it is, checked, in both languages; back in Chinese afterwards."""
            url = page.url
            for lang in LANGS:
                page.goto(f"{origin(url)}/console/lang?to={lang}")
                page.goto(url)
                accessible(page, f"{name} ({lang})")
                page.screenshot(path=os.path.join(args.shots, f"{name}-{lang}.png"), full_page=True)
            page.goto(f"{origin(url)}/console/lang?to=zh-CN")
            page.goto(url)

        def sign_in_by_keyboard(page, site, email):
            page.goto(f"{site}/console")
            expect(page).to_have_url(f"{site}/console/login")
            accessible(page, f"sign-in on {site}")
            # The first Tab reaches the skip link; the form is done with keys alone.
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.className") == "skip"
            page.focus("#email")
            page.keyboard.type(email)
            page.keyboard.press("Tab")
            page.keyboard.type(PASSWORD)
            page.keyboard.press("Enter")
            expect(page).to_have_url(f"{site}/console")

        def add_child(page, name, **fields):
            page.fill("#name", name)
            for field, value in fields.items():
                if field == "theme":
                    page.select_option("#theme", value)
                else:
                    page.fill(f"#{field}", value)
            page.click("form[action='/console/nodes'] button[type=submit]")
            expect(page.locator("table")).to_contain_text(name)

        def add_account(page, child, email):
            row = page.locator("tr", has_text=child)
            row.locator("a[href^='/console/accounts?node_id=']").click()
            expect(page.locator("h1")).to_contain_text(child)
            page.fill("#email", email)
            page.fill("#password", PASSWORD)
            page.click("form[action='/console/accounts'] button[type=submit]")
            expect(page.locator("table")).to_contain_text(email)

        def install_and_offer(page):
            page.goto(f"{partner_site}/console/plugins")
            for archive, plugin in zip(args.plugin, PLUGINS):
                page.set_input_files("#archive", archive)
                page.click("form[action='/console/plugins/upload'] button[type=submit]")
                expect(page.locator("table")).to_contain_text(plugin)
                page.click(f"form[action='/console/plugins/{plugin}/offer'] button")
                withdraw = page.locator(f"form[action='/console/plugins/{plugin}/withdraw']")
                expect(withdraw).to_have_count(1)
            photograph(page, "partner-plugins")

        def package_for(page, merchant):
            page.goto(f"{partner_site}/console/packages")
            page.fill("#name", "金卡套餐")
            for plugin in PLUGINS:
                page.check(f"input[name=plugins][value='{plugin}']")
            page.fill("#validity_days", "365")
            page.fill("#max_members", "1000")
            page.click("form[action='/console/packages'] button[type=submit]")
            page.click("form[action$='/publish'] button")
            expect(page.locator("h1")).to_have_text("金卡套餐")
            page.select_option("#merchant_id", label=merchant)
            photograph(page, "agent-package")
            page.click("form[action$='/assign'] button")
            expect(page.locator("table")).to_contain_text(merchant)
            photograph(page, "agent-assignments")

        def sign_out(page):
            page.click("form[action='/console/logout'] button")
            expect(page).to_have_url(re.compile(r".*/console/login$"))

        # The platform adds a partner on its own domain and theme, and the partner's admin.
        page = visitor()
        sign_in_by_keyboard(page, console, args.root_email)
        add_child(page, "翡翠茶饮服务商", domain="jade.test", theme="jade")
        photograph(page, "platform-home")
        add_account(page, "翡翠茶饮服务商", "admin@jade.test")
        photograph(page, "platform-accounts")
        sign_out(page)

        # Down the tree, each on the partner's domain: partner → agent → merchant → store.
        tiers = [
            ("partner", "admin@jade.test", "华东代理", "agent@jade.test"),
            ("agent", "agent@jade.test", "莲花茶馆", "owner@jade.test"),
            ("merchant", "owner@jade.test", "前台门店", "cashier@jade.test"),
        ]
        for tier, email, child, account in tiers:
            page = visitor()
            sign_in_by_keyboard(page, partner_site, email)
            expect(page.locator(".brand")).to_have_text("翡翠支付")
            add_child(page, child)
            photograph(page, f"{tier}-home")
            add_account(page, child, account)
            if tier == "partner":
                install_and_offer(page)
            if tier == "agent":
                package_for(page, child)
            if tier == "merchant":
                page.goto(f"{partner_site}/console/assignments")
                expect(page.locator("table")).to_contain_text("金卡套餐 v1")
                photograph(page, "merchant-assignments")
                # Membership's own pages, drawn by the console from its data.
                page.get_by_role("link", name="会员", exact=True).click()
                expect(page.locator("h1")).to_have_text("会员")
                expect(page.locator("input[type=search]")).to_have_count(1)
                photograph(page, "merchant-members")
                page.get_by_role("link", name="会员卡", exact=True).click()
                expect(page.locator("dl.fields")).to_contain_text("never")
                photograph(page, "merchant-card")
                page.goto(f"{partner_site}/console/alipay")
                page.click("form[action='/console/alipay/keypair'] button")
                expect(page.locator("#app_public_key")).to_have_value(re.compile("^MII"))
                photograph(page, "merchant-alipay")
                page.goto(f"{partner_site}/console/audit")
                expect(page.locator("table")).to_contain_text("store.create")
                photograph(page, "merchant-audit")
            sign_out(page)

        # The cashier sees the store and may add nothing, neither nodes nor accounts.
        page = visitor()
        sign_in_by_keyboard(page, partner_site, "cashier@jade.test")
        expect(page.locator("h1")).to_have_text("前台门店")
        expect(page.locator("form[action='/console/nodes']")).to_have_count(0)
        expect(page.locator("nav.menu a[href='/console/accounts']")).to_have_count(0)
        photograph(page, "store-home")
        sign_out(page)
        browser.close()
    print(f"checked {len(checked)} pages: " + ", ".join(checked))


def origin(url):
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


if __name__ == "__main__":
    main()
