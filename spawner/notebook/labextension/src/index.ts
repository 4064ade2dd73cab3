/**
 * aipower-hub: the project's points balance and burn rate in JupyterLab's status bar.
 *
 * Reads `<base_url>aipower/usage` (the server extension in spawner/notebook/usage.py) once
 * at start and every 60 s while the page is visible, and shows "點數 Points 996.667 · 4/h"
 * with a tooltip in Traditional Chinese, then English.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

const REFRESH_MS = 60_000;

/** The answer of GET aipower/usage. */
interface IUsage {
  project: { id: number; name: string } | null;
  balance_points: string;
  burn_rate_points_per_hour: string;
  window_end: string | null;
  hours_left_at_current_rate: string | null;
}

/** "2026-04-01T00:00:00+08:00" as "2026-04-01 00:00" (the service's own time zone). */
function shortTime(iso: string | null): string {
  return iso ? iso.slice(0, 16).replace('T', ' ') : '';
}

function label(usage: IUsage): string {
  return `點數 Points ${usage.balance_points} · ${usage.burn_rate_points_per_hour}/h`;
}

function tooltip(usage: IUsage): string {
  const name = usage.project?.name ?? '';
  const balance = usage.balance_points;
  const rate = usage.burn_rate_points_per_hour;
  const hours = usage.hours_left_at_current_rate;
  const end = shortTime(usage.window_end);
  const zh = [
    `計畫：${name}`,
    `剩餘 ${balance} 點；` +
      (hours === null
        ? '目前沒有扣點。'
        : `目前每小時扣 ${rate} 點，以此速率約可再用 ${hours} 小時。`) +
      (end ? `使用期間至 ${end} 結束。` : '')
  ];
  const en = [
    `Project: ${name}`,
    `${balance} points left; ` +
      (hours === null
        ? 'nothing is being charged now.'
        : `${rate} points/hour now, about ${hours} hours at this rate.`) +
      (end ? ` The window ends ${end}.` : '')
  ];
  return [...zh, ...en, '（每 60 秒更新 / refreshed every 60 s）'].join('\n');
}

class UsageItem extends Widget {
  constructor(settings: ServerConnection.ISettings) {
    super();
    this._settings = settings;
    this.id = 'aipower-usage';
    this._text = document.createElement('span');
    this._text.className = 'jp-StatusBar-TextItem';
    this._text.textContent = '點數 Points …';
    this.node.appendChild(this._text);
  }

  async refresh(): Promise<void> {
    const url = this._settings.baseUrl + 'aipower/usage';
    try {
      const response = await ServerConnection.makeRequest(
        url,
        { cache: 'no-store' },
        this._settings
      );
      const body = await response.json();
      if (!response.ok) {
        throw new Error(
          body?.message ?? `無法取得點數 / cannot get the balance (${response.status})`
        );
      }
      this.show_(label(body), tooltip(body), false);
    } catch (error) {
      const message =
        error instanceof Error && error.message
          ? error.message
          : '無法取得點數 / cannot get the balance';
      this.show_('點數 Points —', message, true);
    }
  }

  private show_(text: string, title: string, failed: boolean): void {
    this._text.textContent = text;
    this.node.title = title;
    this.toggleClass('aipower-usage-error', failed);
  }

  private _settings: ServerConnection.ISettings;
  private _text: HTMLSpanElement;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'aipower-hub-usage:status',
  description: "The project's points balance and burn rate in the status bar.",
  autoStart: true,
  requires: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar) => {
    const item = new UsageItem(app.serviceManager.serverSettings);
    statusBar.registerStatusItem('aipower-hub-usage:status', {
      item,
      align: 'left',
      rank: 1000
    });
    const refresh = () => {
      if (!document.hidden) {
        void item.refresh();
      }
    };
    refresh();
    window.setInterval(refresh, REFRESH_MS);
    document.addEventListener('visibilitychange', refresh);
  }
};

export default plugin;
